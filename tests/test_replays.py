"""Streamed hits' SSE bodies are kept by the entry they replay: a kept body is the one
synthesis gives, for each include_usage and each stored version, and the memory is bounded."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from proxy.answers import Replays
from proxy.call import ENDPOINTS, Endpoint
from proxy.store import Entry
from tests.harness import chat_completion

CHAT = ENDPOINTS[0]


@dataclass
class Asked:  # what Replays reads of a Call
    endpoint: Endpoint
    include_usage: bool


def entry(content: str, fingerprint: str = "fp_a", created: float = 1.0) -> Entry:
    answer = chat_completion(content, model="gpt-a", fingerprint=fingerprint, usage=(3, 5))
    body = orjson.dumps(answer)
    return Entry(
        "k", fingerprint, created, 200, "application/json", CHAT.path, "gpt-a", 1, 3, 5, body, b"{}"
    )


def synthesized(asked: Asked, stored: Entry) -> bytes:
    return CHAT.kind.replay(orjson.loads(stored.body), stored.stream, asked.include_usage)


def test_a_kept_body_is_the_synthesized_one_for_each_version_and_option() -> None:
    replays = Replays()
    versions = [entry("one"), entry("two", "fp_b"), entry("three", created=2.0)]
    for _ in range(2):  # made, then kept
        for stored in versions:
            for usage in (False, True):
                asked = Asked(CHAT, usage)
                assert replays.body(asked, stored) == synthesized(asked, stored)  # type: ignore[arg-type]
    with_usage = replays.body(Asked(CHAT, True), versions[0])  # type: ignore[arg-type]
    assert b'"usage"' in with_usage
    assert b'"usage"' not in replays.body(Asked(CHAT, False), versions[0]).split(b"[DONE]")[0]  # type: ignore[arg-type]


def test_replays_are_bounded_by_bytes() -> None:
    replays = Replays(budget=64 * 1024)
    for i in range(200):
        replays.body(Asked(CHAT, False), entry("hi", created=float(i)))  # type: ignore[arg-type]
    assert 32 * 1024 < replays.held <= 64 * 1024
    held = replays.held
    big = entry("word " * 2000)  # over a sixteenth of the budget: made, never kept
    assert replays.body(Asked(CHAT, False), big) == synthesized(Asked(CHAT, False), big)  # type: ignore[arg-type]
    assert replays.held == held
