"""The parse memo: a request whose bytes and headers were seen before gets the very result
a full parse gives it, under every rule that can change a key, and the memo stays bounded."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from pathlib import Path
from unittest import mock

import orjson
import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy import strictjson
from proxy.call import ENDPOINTS, parse
from proxy.config import Settings, load_settings
from proxy.errors import ProxyError
from proxy.memo import NODES_ON_LOOP, Memo, Parsed, held, shape

CHAT = ENDPOINTS[0]
SECRET = "sk-proj-" + "Q7d2" * 12  # a key-shaped value: redaction rewrites it

CONFIGS = {
    "defaults": "",
    "every rule": """
[seed]
mode = "override"
default = 7
[cache]
scope = "per-key"
ignore_fields = ["user"]
ignore_paths = ["messages[*].name", "metadata.trace"]
[[cache.normalize]]
pattern = "[0-9]{4}-[0-9]{2}-[0-9]{2}"
replace = "<date>"
paths = ["messages[*].content"]
[redact]
patterns = ["tok-[a-z]+"]
""",
    "passthrough seeds": """
[seed]
mode = "passthrough"
""",
    "the operator's seed policy": """
[seed]
mode = "require"
allow_client_mode = false
""",
}


def settings_for(name: str, tmp: Path) -> Settings:
    path = tmp / f"{name.replace(' ', '-')}.toml"
    path.write_text(CONFIGS[name])
    return load_settings(path, env={}, flags={"cache.dir": str(tmp / "cache")})


def request(raw: bytes, headers: dict[str, str], query: str = "") -> object:
    payload = streams.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=mock.Mock())
    payload.feed_data(raw)
    payload.feed_eof()
    target = "/v1/chat/completions" + (f"?{query}" if query else "")
    sent = CIMultiDict({"Content-Type": "application/json", **headers})
    return make_mocked_request("POST", target, headers=sent, payload=payload)


async def outcome(settings: Settings, raw: bytes, headers: dict[str, str], memo: Memo | None):
    """What the flow gets from parse(): every field of the Call, or the error."""
    try:
        call = await parse(
            request(raw, headers),  # type: ignore[arg-type]
            CHAT,
            settings,
            "record",
            None,
            memo,
        )
    except ProxyError as exc:
        return ("error", exc.status, exc.code, exc.message)
    return (
        call.key,
        strictjson.dumps(call.body),
        call.upstream_body,
        call.seed_edit,
        call.model,
        call.seed,
        call.plan,
        call.stream,
        call.include_usage,
        call.source,
    )


texts = st.sampled_from(
    ["hello", "on 2026-12-01 at noon", "on 2025-01-31 at noon", SECRET, "tok-abc", "é ☃"]
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system"]), "content": texts},
        optional={"name": st.sampled_from(["ann", "bob"])},
    ),
    min_size=1,
    max_size=3,
)
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-a", "gpt-b", "m" * 300])},
    optional={
        "messages": messages,
        "seed": st.one_of(st.integers(-3, 3), st.just(2**70), st.just("7")),
        "stream": st.booleans(),
        "stream_options": st.just({"include_usage": True}),
        "user": st.sampled_from(["u1", "u2"]),
        "metadata": st.fixed_dictionaries({"trace": st.sampled_from(["t1", "t2"])}),
        "temperature": st.sampled_from([0, 0.5]),
    },
)
raws = st.one_of(
    bodies.map(lambda b: json.dumps(b, separators=(",", ":")).encode()),
    bodies.map(lambda b: json.dumps(b, indent=2).encode()),  # the same JSON in other bytes
    st.sampled_from([b"{", b"[]", b'{"model":"a","model":"b"}', b'{"model":"a","n":1e400}']),
)
header_sets = st.fixed_dictionaries(
    {},
    optional={
        "X-Seedproxy-Namespace": st.sampled_from(["team-a", "team-b", "bad name!"]),
        "X-Seedproxy-Seed-Mode": st.sampled_from(["force", "passthrough", "require", "nope"]),
        "Authorization": st.sampled_from(["Bearer sk-one", "Bearer sk-two"]),
        "api-key": st.sampled_from(["k1", "k2"]),
        "Cache-Control": st.sampled_from(["no-cache", "no-store", "only-if-cached"]),
    },
)


@pytest.mark.parametrize("config", list(CONFIGS))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(raws, min_size=1, max_size=3),
    st.lists(header_sets, min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=16),
)
def test_a_memoized_parse_agrees_with_a_full_one(
    config: str,
    tmp_path: Path,
    bodies_: list[bytes],
    headers_: list[dict[str, str]],
    sequence: list[tuple[int, int]],
) -> None:
    """A few bodies and header sets, sent in any combination and order through one memo
    (so the same bytes come with other headers, and repeats come from the memo): each
    result is the one a parse without memo gives, whatever came before it."""
    settings_ = settings_for(config, tmp_path)
    memo = Memo()

    async def check() -> None:
        for i, j in sequence:
            raw, headers = bodies_[i % len(bodies_)], headers_[j % len(headers_)]
            fresh = await outcome(settings_, raw, headers, None)
            assert await outcome(settings_, raw, headers, memo) == fresh
            assert await outcome(settings_, raw, headers, memo) == fresh  # from the memo

    asyncio.run(check())


HEADER_SETS = [
    {},
    {"X-Seedproxy-Namespace": "team-a"},
    {"X-Seedproxy-Namespace": "team-b"},
    {"X-Seedproxy-Seed-Mode": "passthrough"},
    {"X-Seedproxy-Seed-Mode": "require"},
    {"Authorization": "Bearer sk-one"},
    {"Authorization": "Bearer sk-two"},
    {"api-key": "k1"},
    {"Cache-Control": "no-store"},
    {"Cache-Control": "only-if-cached", "X-Seedproxy-Namespace": "team-a"},
]
BODIES = [
    {"model": "gpt-a", "messages": [{"role": "user", "content": "on 2026-12-01 " + SECRET}]},
    {"model": "gpt-a", "seed": 3, "user": "u1", "messages": [{"role": "user", "content": "x"}]},
    {"model": "gpt-a", "stream": True, "stream_options": {"include_usage": True}},
]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_header_set_in_turn_through_one_memo(config: str, tmp_path: Path) -> None:
    """Each body with every header set, forwards then backwards, through one memo."""
    settings_ = settings_for(config, tmp_path)
    memo = Memo()

    async def check() -> None:
        for body in BODIES:
            raw = orjson.dumps(body)
            for headers in HEADER_SETS + HEADER_SETS[::-1]:
                fresh = await outcome(settings_, raw, headers, None)
                assert await outcome(settings_, raw, headers, memo) == fresh, headers

    asyncio.run(check())


def test_repeats_are_served_from_the_memo_and_scopes_stay_apart(tmp_path: Path) -> None:
    settings_ = settings_for("every rule", tmp_path)
    memo = Memo()
    raw = orjson.dumps({"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]})

    async def run() -> None:
        first = await outcome(settings_, raw, {"Authorization": "Bearer sk-one"}, memo)
        assert len(memo) == 1
        with mock.patch("proxy.call.parse_body", side_effect=AssertionError("parsed again")):
            again = await outcome(settings_, raw, {"Authorization": "Bearer sk-one"}, memo)
        assert again == first
        other = await outcome(settings_, raw, {"Authorization": "Bearer sk-two"}, memo)
        assert other[0] != first[0]  # per-key scope: another credential, another key
        assert len(memo) == 2
        assert "sk-one" not in repr(memo._map)  # a credential's hash at most, never itself

    asyncio.run(run())


def test_memo_is_bounded_by_entries_and_bytes() -> None:
    parsed = Parsed({}, "", "k", "m", None, False)
    memo = Memo(entries=3, budget=400, largest=160)  # a character counts 4 bytes
    for i in range(5):
        memo.put(("/p", "", "", None, b"%d" % i), parsed)
    assert len(memo) == 3
    assert memo.get(("/p", "", "", None, b"0")) is None  # the least recently used went first
    assert memo.get(("/p", "", "", None, b"4")) is parsed
    memo.put(("/p", "", "", None, b"x" * 41), parsed)  # too large to hold
    assert memo.get(("/p", "", "", None, b"x" * 41)) is None
    for i in range(3):
        memo.put(("/p", "", "", None, b"%d" % i + b"y" * 39), parsed)
    assert memo.held <= 400 and len(memo) == 2


SHAPES = {  # 60 KB bodies, each parsing into another kind of structure
    "dicts": b"[" + b",".join([b"{}"] * 20_000) + b"]",
    "lists": b"[" + b",".join([b"[]"] * 20_000) + b"]",
    "floats": b"[" + b",".join([b"0.5"] * 15_000) + b"]",
    "ints": b"[" + b",".join([b"123456"] * 9_000) + b"]",
    "strings": b"[" + b",".join([b'"ab"'] * 12_000) + b"]",
    "keys": b"{" + b",".join(b'"k%d":0' % i for i in range(6_000)) + b"}",
    "objects": b"[" + b",".join([b'{"a":[1]}'] * 6_000) + b"]",
    "wide text": b'["' + b"a" * 60_000 + "\U0001f600".encode() + b'"]',
    "chat": orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi " * 20_000}]}),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_what_an_entry_holds_is_never_undercounted(shape: str) -> None:
    """The issue's case: 300 distinct 60 KB bodies of ``[{},{},...]`` pinned ~200 MiB
    while the memo counted 18 MB of bytes."""
    raw = SHAPES[shape]
    tracemalloc.start()
    try:
        value = orjson.loads(raw)
        parsed_bytes = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert value is not None
    assert held(("/p", "", "", None, raw), Parsed({}, "", "k", "m", None, False)) >= parsed_bytes


def test_a_body_that_parses_into_much_is_not_memoized() -> None:
    memo = Memo()
    parsed = Parsed({}, "", "k", "m", None, False)
    memo.put(("/p", "", "", None, SHAPES["dicts"]), parsed)
    assert len(memo) == 0
    memo.put(("/p", "", "", None, SHAPES["chat"]), parsed)  # text holds what it weighs
    assert len(memo) == 1


def test_a_body_of_many_small_parts_is_parsed_off_the_loop(tmp_path: Path, monkeypatch) -> None:
    """60 KB of ``[{},{},...]`` (under the 64 KiB byte bound) took 100 ms of walking on the
    loop under load: the number of parts decides, not only the bytes."""
    settings_ = settings_for("every rule", tmp_path)
    threaded: list[int] = []
    real = asyncio.to_thread

    async def to_thread(fn, *args):
        threaded.append(len(args[0][4]))
        return await real(fn, *args)

    monkeypatch.setattr("proxy.call.asyncio.to_thread", to_thread)
    small = orjson.dumps({"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]})
    many = b'{"model":"gpt-a","messages":[%s]}' % b",".join([b'{"role":"user"}'] * 3_000)
    assert len(many) < 64 * 1024 and sum(shape(many)) > NODES_ON_LOOP
    memo = Memo()
    assert asyncio.run(outcome(settings_, small, {}, memo))[0] != "error"
    assert threaded == []
    assert asyncio.run(outcome(settings_, many, {}, memo))[0] != "error"
    assert threaded == [len(many)] and len(memo) == 1  # the small one only
