"""What a hit returns belongs to the caller (issue 28 item 3): fields the key leaves out
that the answer repeats (Responses ``user``, ``metadata``, ``store``...; chat
``metadata``) carry the caller's own values, or are absent when it sent none, in JSON
hits, streamed hits (every event holding the response object) and coalesced answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import openai
import orjson
import pytest

from proxy.answers import Replays, live
from proxy.call import ENDPOINTS, Endpoint
from proxy.config import CacheSettings
from proxy.echoes import Echoes
from proxy.fetch import Live
from proxy.kinds import KINDS
from proxy.store import Entry
from tests.conftest import sdk
from tests.harness import ProxyServer, http
from tests.upstream import FakeUpstream

ALICE = {
    "user": "alice@corp.example",
    "metadata": {"customer_id": "c-alice", "note": "refund for Alice"},
    "store": True,
    "prompt_cache_key": "alice-cache",
    "safety_identifier": "alice-hash",
}
BOB = {"user": "bob@corp.example", "metadata": {"customer_id": "c-bob"}, "store": False}
IGNORED = ["stream", "stream_options", "user", "metadata", "store"]
# the two other echoes left out of the key, one as a field and one through a path
CACHE = {"ignore_fields": [*IGNORED, "prompt_cache_key"], "ignore_paths": ["safety_identifier"]}
ALICE_TEXT = b"alice"  # in every value of Alice's that Bob must never see
RESPONSE_OBJECT_EVENTS = {"response.created", "response.in_progress", "response.completed"}


@pytest.fixture
def backend() -> str:
    return "disk"


def no_alice(raw: Any) -> None:
    """Nothing Alice sent (her address, her metadata, her keys) is in ``raw``."""
    data = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    assert ALICE_TEXT not in data.lower()


def bobs(response: dict[str, Any], sent: dict[str, Any]) -> None:
    """The echoed fields are what Bob sent, and absent where he sent none."""
    for name in ("user", "metadata", "store", "prompt_cache_key", "safety_identifier"):
        if name in sent:
            assert response[name] == sent[name], name
        else:
            assert name not in response, name
    no_alice(response)


def ask(client: openai.OpenAI, who: dict[str, Any], **extra: Any) -> Any:
    return client.responses.with_raw_response.create(
        model="gpt-test", input="What is 2+2?", **who, **extra
    )


def test_a_responses_json_hit_carries_the_callers_echoes(make_proxy, upstream):
    proxy = make_proxy(cache=CACHE)
    with sdk(proxy) as client:
        first = ask(client, ALICE)
        assert first.headers["x-cache"] == "MISS"
        assert first.parse().user == ALICE["user"]  # Alice's own live answer, as sent
        for bob in (BOB, {}, {"user": "bob@corp.example"}):
            hit = ask(client, bob)
            assert hit.headers["x-cache"] == "HIT"
            bobs(orjson.loads(hit.content), bob)
            assert hit.parse().output_text == first.parse().output_text
    assert len(upstream.calls) == 1


def stream_events(client: openai.OpenAI, who: dict[str, Any]) -> tuple[str, list[Any]]:
    with client.responses.with_streaming_response.create(
        model="gpt-test", input="What is 2+2?", stream=True, **who
    ) as response:
        return response.headers["x-cache"], list(response.parse())


@pytest.mark.parametrize("recorded_streaming", [True, False])
def test_every_streamed_event_holding_the_response_carries_the_callers_echoes(
    make_proxy, upstream, recorded_streaming
):
    proxy = make_proxy(cache=CACHE)
    with sdk(proxy) as client:
        if recorded_streaming:  # replayed as recorded, events rewritten
            label, _ = stream_events(client, ALICE)
        else:  # recorded as JSON, events synthesized
            label = ask(client, ALICE).headers["x-cache"]
        assert label == "MISS"
        for bob in (BOB, {}):
            label, events = stream_events(client, bob)
            assert label == "HIT"
            holding = [e for e in events if e.type in RESPONSE_OBJECT_EVENTS]
            assert {e.type for e in holding} == RESPONSE_OBJECT_EVENTS
            for event in events:
                no_alice(event.model_dump_json().encode())
            for event in holding:
                bobs(event.response.model_dump(exclude_unset=True), bob)
    assert len(upstream.calls) == 1


def test_a_chat_hit_carries_the_callers_metadata(make_proxy, upstream):
    proxy = make_proxy()
    messages = [{"role": "user", "content": "What is 2+2?"}]
    with sdk(proxy) as client:
        create = client.chat.completions.with_raw_response.create
        first = create(model="gpt-test", messages=messages, metadata=ALICE["metadata"])
        assert orjson.loads(first.content)["metadata"] == ALICE["metadata"]  # echoed live
        hit = create(model="gpt-test", messages=messages, metadata=BOB["metadata"])
        assert hit.headers["x-cache"] == "HIT"
        assert orjson.loads(hit.content)["metadata"] == BOB["metadata"]
        bare = create(model="gpt-test", messages=messages)
        assert "metadata" not in orjson.loads(bare.content)
        stream = client.chat.completions.create(
            model="gpt-test", messages=messages, metadata=BOB["metadata"], stream=True
        )
        chunks = [c.model_dump(exclude_unset=True) for c in stream]
        assert chunks[0]["metadata"] == BOB["metadata"]
        no_alice(orjson.dumps(chunks))
    assert len(upstream.calls) == 1


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.mark.parametrize("stream", [False, True])
def test_a_coalesced_answer_carries_the_waiters_own_echoes(
    make_proxy, upstream: FakeUpstream, stream: bool
):
    proxy: ProxyServer = make_proxy(cache=CACHE)
    upstream.gate = threading.Event()  # Alice's call waits at the upstream
    with sdk(proxy) as client, ThreadPoolExecutor(2) as pool:

        def call(who: dict[str, Any]) -> Any:
            if stream:
                return stream_events(client, who)
            return ask(client, who)

        alice = pool.submit(call, ALICE)
        until(lambda: len(upstream.calls) == 1, "Alice's call reaches the upstream")
        bob = pool.submit(call, BOB)
        until(lambda: proxy.counters.get("coalesced", 0) == 1, "Bob waits for Alice's call")
        upstream.gate.set()
        alice.result(30)
        if stream:
            _, events = bob.result(30)
            holding = [e for e in events if e.type in RESPONSE_OBJECT_EVENTS]
            assert holding
            for event in events:
                no_alice(event.model_dump_json().encode())
            for event in holding:
                bobs(event.response.model_dump(exclude_unset=True), BOB)
        else:
            bobs(orjson.loads(bob.result(30).content), BOB)
    assert len(upstream.calls) == 1


def test_only_echoed_fields_the_key_ignores_are_the_callers() -> None:
    echoes = Echoes(KINDS["response"].echoed, IGNORED, ["metadata.customer_id", "input[*].id"])
    assert echoes.fields == {"user", "metadata", "store"}  # stream is not echoed; input not
    answer = {"id": "r", "user": "alice", "metadata": {"a": 1}, "store": True, "tools": []}
    assert echoes.own(answer, {"user": "bob"}) == {"id": "r", "tools": [], "user": "bob"}
    assert echoes.json(orjson.dumps(answer), {}) == b'{"id":"r","tools":[]}'
    plain = orjson.dumps({"id": "r", "output": []})
    assert echoes.json(plain, {}) is plain  # nothing to do: the bytes as stored, unparsed
    # what a hit decides before building anything: only the plain case goes as it is
    assert echoes.untouched(plain, {"input": "hi"})
    assert not echoes.untouched(plain, {"input": "hi", "store": False})  # the caller's own
    assert not echoes.untouched(orjson.dumps(answer), {"input": "hi"})  # another's, to drop
    assert Echoes(KINDS["embedding"].echoed, IGNORED, []).untouched(b'{"user":1}', {"user": 2})
    assert Echoes(KINDS["chat"].echoed, IGNORED, []).fields == {"metadata"}
    assert not Echoes(KINDS["embedding"].echoed, IGNORED, []).fields
    assert not Echoes(KINDS["response"].echoed, [], []).fields  # all keyed: nothing to swap


def test_an_echo_beyond_64_bits_comes_back_exactly(make_proxy, upstream):
    proxy = make_proxy(cache=CACHE)
    huge = "123456789012345678901234567890"  # a number orjson alone cannot write
    url, headers = proxy.url, {"Content-Type": "application/json"}
    body = '{"model":"gpt-test","input":"What is 2+2?","user":%s%s}'
    assert http(url, "POST", "/v1/responses", body % (huge, ""), headers)[0] == 200
    status, got, plain = http(url, "POST", "/v1/responses", body % (huge, ""), headers)
    assert status == 200 and got["X-Cache"] == "HIT"
    assert f'"user":{huge}'.encode() in plain
    status, got, streamed = http(
        url, "POST", "/v1/responses", body % (huge, ',"stream":true'), headers
    )
    assert status == 200 and got["X-Cache"] == "HIT"
    assert streamed.count(f'"user":{huge}'.encode()) == 3  # created, in_progress, completed


@dataclass
class Asked:  # what answers.live reads of a Call
    endpoint: Endpoint
    body: dict[str, Any]
    key: str = "k"
    seed: int | None = None

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def include_usage(self) -> bool:
        return False


def test_an_entry_another_process_stored_meanwhile_carries_the_callers_echoes():
    # a miss coalesced across processes gets the entry the other process stored
    settings = CacheSettings(
        ignore_fields=(*IGNORED, "prompt_cache_key"), ignore_paths=("safety_identifier",)
    )
    replays = Replays(settings)
    responses = next(e for e in ENDPOINTS if e.path == "/v1/responses")
    alices = {"id": "resp_1", "object": "response", "output": [], **ALICE}
    stored = Entry(
        "k",
        None,
        1.0,
        200,
        "application/json",
        responses.path,
        "gpt-test",
        None,
        1,
        1,
        orjson.dumps(alices),
        b"{}",
        b"".join(responses.kind.synthesized(alices, False)),
    )
    borrowed = Live.of(stored)
    assert borrowed.borrowed
    for stream in (False, True):
        bob = Asked(responses, {**BOB, "stream": stream})
        answer = live(bob, borrowed, "MISS", replays, shared=borrowed.borrowed)  # type: ignore[arg-type]
        assert isinstance(answer.body, bytes)
        no_alice(answer.body)
        assert b"bob@corp.example" in answer.body


def test_a_large_hit_is_given_its_echoes_and_parsed_off_the_loop(make_proxy, upstream):
    """Giving a large stored answer the caller's echoes (JSON) or parsing it to stream it
    costs time that grows with the entry: it happens in a worker thread, never on the loop
    that serves everyone else."""
    proxy = make_proxy(cache=CACHE)
    upstream.content_lines = 5_000  # a 200 KB answer
    loop_thread = proxy.bg.run(_loop_thread())
    threads: list[int] = []
    handed: list[Any] = []
    replays = proxy.pipeline.replays
    json, sse = replays.json, replays.sse

    def spy_json(*args: Any) -> bytes:
        threads.append(threading.get_ident())
        return json(*args)

    def spy_sse(call: Any, entry: Any, parsed: Any = None) -> Any:
        handed.append(parsed)  # parsed already, off the loop, by the caller
        return sse(call, entry, parsed)

    replays.json, replays.sse = spy_json, spy_sse
    with sdk(proxy) as client:
        assert ask(client, ALICE).headers["x-cache"] == "MISS"
        hit = ask(client, BOB)
        assert hit.headers["x-cache"] == "HIT"
        bobs(orjson.loads(hit.content), BOB)
        assert threads and loop_thread not in threads
        label, events = stream_events(client, BOB)
    assert label == "HIT" and events[-1].response.output_text == hit.parse().output_text
    assert len(handed) == 1 and isinstance(handed[0], dict)
    bobs(events[-1].response.model_dump(exclude_unset=True), BOB)


async def _loop_thread() -> int:
    return threading.get_ident()
