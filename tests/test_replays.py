"""Streamed hits' SSE bodies are kept by the content they replay (issue 28 item 4): a kept
body is the one synthesis gives, for each include_usage and each stored content; another
answer under the same key, fingerprint and time streams the new answer; memory is
bounded; a large entry is streamed as it is made, never kept."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp.payload import Payload

from proxy.answers import CHUNK, SMALL, Replays
from proxy.call import ENDPOINTS, Endpoint
from proxy.config import CacheSettings
from proxy.store import Entry
from tests.harness import chat_completion

CHAT = ENDPOINTS[0]


@dataclass
class Asked:  # what Replays reads of a Call
    endpoint: Endpoint
    include_usage: bool
    body: dict[str, Any] = field(default_factory=dict)


def entry(content: str, fingerprint: str = "fp_a", created: float = 1.0) -> Entry:
    answer = chat_completion(content, model="gpt-a", fingerprint=fingerprint, usage=(3, 5))
    body = orjson.dumps(answer)
    return Entry(
        "k", fingerprint, created, 200, "application/json", CHAT.path, "gpt-a", 1, 3, 5, body, b"{}"
    )


def synthesized(asked: Asked, stored: Entry) -> bytes:
    answer = orjson.loads(stored.body)
    return b"".join(CHAT.kind.replay(answer, stored.stream, asked.include_usage))


def sse(replays: Replays, asked: Asked, stored: Entry) -> bytes | Payload:
    return asyncio.run(replays.sse(asked, stored))  # type: ignore[arg-type]


def test_a_kept_body_is_the_synthesized_one_for_each_version_and_option() -> None:
    replays = Replays(CacheSettings())
    versions = [entry("one"), entry("two", "fp_b"), entry("three", created=2.0)]
    for _ in range(2):  # made, then kept
        for stored in versions:
            for usage in (False, True):
                asked = Asked(CHAT, usage)
                assert sse(replays, asked, stored) == synthesized(asked, stored)
    with_usage = sse(replays, Asked(CHAT, True), versions[0])
    assert isinstance(with_usage, bytes) and b'"usage"' in with_usage
    without = sse(replays, Asked(CHAT, False), versions[0])
    assert isinstance(without, bytes) and b'"usage"' not in without.split(b"[DONE]")[0]


def test_another_answer_under_the_same_key_fingerprint_and_time_streams_anew() -> None:
    # an import or a rewrite replaced the entry: same key, fingerprint and created
    replays = Replays(CacheSettings())
    old, new = entry("OLD ANSWER"), entry("FIXED ANSWER")
    assert (old.key, old.fingerprint, old.created) == (new.key, new.fingerprint, new.created)
    assert b"OLD" in sse(replays, Asked(CHAT, False), old)  # type: ignore[operator]
    fixed = sse(replays, Asked(CHAT, False), new)
    assert isinstance(fixed, bytes) and b"FIXED" in fixed and b"OLD" not in fixed


def test_replays_are_bounded_by_bytes() -> None:
    replays = Replays(CacheSettings(), budget=64 * 1024)
    for i in range(200):
        sse(replays, Asked(CHAT, False), entry(f"hi {i}"))
    assert 32 * 1024 < replays.held <= 64 * 1024
    held = replays.held
    big = entry("word " * 2000)  # over a sixteenth of the budget: made, never kept
    assert sse(replays, Asked(CHAT, False), big) == synthesized(Asked(CHAT, False), big)
    assert replays.held == held


def test_a_large_entry_streams_in_chunks_and_is_never_kept() -> None:
    replays = Replays(CacheSettings())
    big = entry("word " * (SMALL // 2))
    assert len(big.body) > SMALL
    asked = Asked(CHAT, True)

    async def read() -> list[bytes]:
        body = await replays.sse(asked, big)  # type: ignore[arg-type]
        assert isinstance(body, Payload)
        return [chunk async for chunk in body._value]  # type: ignore[attr-defined]

    chunks = asyncio.run(read())
    assert len(chunks) > 2
    assert all(len(c) < CHUNK + 1024 for c in chunks)  # about a chunk each, never the whole
    assert b"".join(chunks) == synthesized(asked, big)
    assert replays.held == 0
