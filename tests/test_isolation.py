"""Issue 18, item 4: no client sees another client's live answer or data. Misses coalesce
only within one credential; an error answer goes only to the client that caused it; a
coalesced answer carries no one else's cookie; in per-key scope a replay miss and the
drift list describe only the caller's own recordings."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import orjson

from tests.harness import chat_completion, http, until
from tests.upstream import FakeUpstream, Scripted

BODY = {"model": "gpt-iso", "messages": [{"role": "user", "content": "a private prompt 42"}]}
ALICE = {"Authorization": "Bearer sk-alice-aaaaaaaaaaaaaaaa", "Content-Type": "application/json"}
BOB = {"Authorization": "Bearer sk-bob-bbbbbbbbbbbbbbbbbbbb", "Content-Type": "application/json"}


def _post(proxy: Any, headers: dict[str, str], body: Any = BODY) -> tuple[int, Any, bytes]:
    return http(proxy.url, "POST", "/v1/chat/completions", orjson.dumps(body), headers)


def _together(
    proxy: Any, upstream: FakeUpstream, *clients: dict[str, str]
) -> list[tuple[int, Any, bytes]]:
    """The same request from each client, the later ones sent once the first is upstream;
    the upstream answers once each is either upstream too or waiting for the first."""
    upstream.gate = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        first = pool.submit(_post, proxy, clients[0])
        until(lambda: len(upstream.chat_calls) == 1)
        rest = [pool.submit(_post, proxy, c) for c in clients[1:]]
        until(lambda: len(upstream.chat_calls) + proxy.counters["coalesced"] == len(clients))
        upstream.gate.set()
        return [first.result(), *(f.result() for f in rest)]


def test_misses_with_different_credentials_are_not_coalesced(make_proxy, upstream):
    proxy = make_proxy()
    answers = _together(proxy, upstream, ALICE, BOB)
    assert [a[0] for a in answers] == [200, 200]
    assert len(upstream.chat_calls) == 2
    sent = {c.headers["Authorization"] for c in upstream.chat_calls}
    assert sent == {ALICE["Authorization"], BOB["Authorization"]}


def test_an_error_answer_goes_only_to_the_client_that_caused_it(make_proxy, upstream):
    proxy = make_proxy()
    leak = "Incorrect API key provided: sk-****aaaa"
    upstream.script(
        Scripted(
            status=401,
            body={"error": {"message": leak, "type": "invalid_request_error", "code": None}},
            headers={"Set-Cookie": "session=alice-only"},
        )
    )
    first, second = _together(proxy, upstream, ALICE, ALICE)
    assert first[0] == 401 and leak.encode() in first[2]
    assert second[0] == 200 and leak.encode() not in second[2]
    assert "Set-Cookie" not in second[1]
    assert len(upstream.chat_calls) == 2  # the waiter went upstream itself


def test_a_coalesced_answer_carries_no_one_elses_cookie(make_proxy, upstream):
    proxy = make_proxy()
    upstream.script(
        Scripted(
            status=200,
            body=chat_completion("shared", model="gpt-iso", id="chatcmpl-x"),
            headers={"Set-Cookie": "session=first-only"},
        )
    )
    first, second = _together(proxy, upstream, ALICE, ALICE)
    assert first[0] == second[0] == 200
    assert orjson.loads(first[2]) == orjson.loads(second[2])
    assert first[1]["Set-Cookie"] == "session=first-only"
    assert "Set-Cookie" not in second[1]
    assert len(upstream.chat_calls) == 1


def test_a_per_key_replay_miss_describes_only_the_callers_recordings(make_proxy, upstream):
    proxy = make_proxy(cache={"scope": "per-key"})
    assert _post(proxy, ALICE)[0] == 200
    proxy.restart(cache={"mode": "replay"})
    asked = {**BODY, "messages": [{"role": "user", "content": "a private prompt 43"}]}
    status, _, bob_sees = _post(proxy, BOB, asked)
    assert status == 504
    alice_key = _post(proxy, ALICE)[1]["X-Seedproxy-Key"]
    assert alice_key.encode() not in bob_sees and b"differs in" not in bob_sees
    assert b"Nothing is recorded" in bob_sees
    status, _, alice_sees = _post(proxy, ALICE, asked)
    assert status == 504 and alice_key.encode() in alice_sees and b"messages" in alice_sees


def test_per_key_drift_is_shown_only_to_its_owner(make_proxy, upstream):
    proxy = make_proxy(cache={"scope": "per-key"})
    assert _post(proxy, ALICE)[0] == 200
    upstream.nondeterministic = True
    assert _post(proxy, {**ALICE, "Cache-Control": "no-cache"})[0] == 200

    def drift(headers: dict[str, str], path: str = "/_seedproxy/drift") -> bytes:
        return http(proxy.url, "GET", path, headers=headers)[2]

    assert len(orjson.loads(drift(ALICE))["drift"]) == 1
    assert orjson.loads(drift(BOB))["drift"] == []
    assert "drift show" in drift(ALICE, "/_seedproxy/").decode()
    assert "drift show" not in drift(BOB, "/_seedproxy/").decode()
