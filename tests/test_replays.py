"""Streamed hits' SSE bodies are kept by the content they replay (issue 28 item 4): a kept
body is the one synthesis gives, for each include_usage and each stored content; another
answer under the same key, fingerprint and time streams the new answer; memory is
bounded; a large entry is streamed as it is made, never kept."""

from __future__ import annotations

import asyncio
import functools
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp.payload import Payload

from proxy.answers import CHUNK, SMALL, Replays
from proxy.call import ENDPOINTS, Endpoint
from proxy.config import CacheSettings
from proxy.store import Entry
from tests.conftest import sdk
from tests.harness import FAKE_KEY, chat_completion, cli
from tests.test_plugin import PLUGIN

pytestmark = pytest.mark.every_store

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
    return replays.sse(asked, stored)  # type: ignore[arg-type]


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


class Written:
    """What a payload writes, write by write (an aiohttp writer, as far as it is used)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)


def test_a_large_entry_streams_in_chunks_and_is_never_kept() -> None:
    replays = Replays(CacheSettings())
    big = entry("word " * (SMALL // 2))
    assert len(big.body) > SMALL
    asked = Asked(CHAT, True)
    body = replays.sse(asked, big)  # type: ignore[arg-type]
    assert isinstance(body, Payload)
    written = Written()
    asyncio.run(body.write(written))  # type: ignore[arg-type]
    assert len(written.chunks) > 2
    assert all(len(c) < CHUNK + 1024 for c in written.chunks)  # about a chunk, not the whole
    assert b"".join(written.chunks) == synthesized(asked, big)
    assert replays.held == 0


# -- end to end: what changes an entry changes what streams -------------------------------

PROMPT = [{"role": "user", "content": "What is the answer?"}]


def said(client: openai.OpenAI) -> tuple[str, str]:
    """(the JSON hit's content, the streamed hit's content) of PROMPT."""
    plain = client.chat.completions.create(model="gpt-test", messages=PROMPT)
    chunks = client.chat.completions.create(model="gpt-test", messages=PROMPT, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return plain.choices[0].message.content or "", streamed


def answering(cassette: Path, content: str, recorded_at: str | None = None) -> None:
    """Make each interaction of ``cassette`` answer ``content`` (recorded at ``recorded_at``)."""
    document = orjson.loads(cassette.read_bytes())
    for interaction in document["interactions"]:
        interaction["response"]["body"]["choices"][0]["message"]["content"] = content
        if recorded_at is not None:
            interaction["recorded_at"] = recorded_at
    cassette.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))


@pytest.mark.parametrize("backend", ["disk"])
def test_an_import_replacing_an_entry_changes_what_streams(proxy, upstream, cache_dir, tmp_path):
    upstream.reply = "OLD ANSWER"
    same = {"SEEDPROXY_UPSTREAM_BASE_URL": proxy.settings.upstream.base_url}

    def store(*args: str) -> subprocess.CompletedProcess[str]:
        """A store command with the proxy's settings: a cassette's keys are computed as
        they give them."""
        return cli(*args, "--cache-dir", str(cache_dir), cwd=tmp_path, env=same)

    with sdk(proxy) as client:
        client.chat.completions.create(model="gpt-test", messages=PROMPT)  # recorded
        out = tmp_path / "cassette.json"
        assert store("export", str(out)).returncode == 0
        # imported back: the entry's time is now the cassette's, to the microsecond
        assert store("import", str(out)).returncode == 0
        assert said(client) == ("OLD ANSWER", "OLD ANSWER")  # the stream made and kept
        answering(out, "FIXED ANSWER")  # same request, fingerprint and time: only the answer
        result = store("import", str(out))
        assert result.returncode == 0 and "1 replaced" in result.stdout, result
        assert said(client) == ("FIXED ANSWER", "FIXED ANSWER")
    assert len(upstream.chat_calls) == 1


PLUGIN_SUITE = """
import openai
import pytest

client = openai.OpenAI()
PROMPT = [{"role": "user", "content": "What is the answer?"}]


def said():
    plain = client.chat.completions.create(model="gpt-test", messages=PROMPT)
    chunks = client.chat.completions.create(model="gpt-test", messages=PROMPT, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return plain.choices[0].message.content, streamed


@pytest.mark.seedproxy
def test_one():
    assert said() == ("ANSWER ONE", "ANSWER ONE")


@pytest.mark.seedproxy
def test_two():
    assert said() == ("ANSWER TWO", "ANSWER TWO")
"""


def test_the_next_plugin_test_streams_its_own_cassettes_answer(
    pytester: pytest.Pytester, upstream, monkeypatch: pytest.MonkeyPatch
):
    # two cassettes with one request, fingerprint and time, and different answers
    upstream.reply = "ANSWER ONE"
    pytester.makepyfile(test_llm=PLUGIN_SUITE)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    run = functools.partial(
        pytester.runpytest_subprocess,
        *PLUGIN,
        "--seedproxy-upstream",
        f"{upstream.url}/v1",
        timeout=180,
    )
    run("-k", "test_one").assert_outcomes(passed=1)
    folder = pytester.path / "cassettes" / "test_llm"
    one = orjson.loads((folder / "test_one.json").read_bytes())
    recorded_at = one["interactions"][0]["recorded_at"]
    (folder / "test_two.json").write_bytes((folder / "test_one.json").read_bytes())
    answering(folder / "test_two.json", "ANSWER TWO", recorded_at)
    run("--seedproxy-mode", "replay", "-p", "no:randomly").assert_outcomes(passed=2)
