"""The pytest plugin, as a user's test suite meets it: real pytest runs (pytester, in their
own processes), the official SDK creating its client at import time, the fake upstream."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import orjson
import pytest

from tests.harness import FAKE_KEY

# Installed, the package's pytest11 entry point loads the plugin; from a source tree it is
# named on the command line.
PLUGIN = (
    []
    if any(ep.name == "seedproxy" for ep in importlib.metadata.entry_points(group="pytest11"))
    else ["-p", "proxy.pytest_plugin"]
)

SUITE = """
import os

import openai
import pytest

client = openai.OpenAI()  # at import time, as applications do
PROMPT = "Say hello"
EXPECT = os.environ["EXPECT"]  # record | replay


def ask(content, **extra):
    return client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": content}], **extra
    )


@pytest.mark.seedproxy
def test_hello(seedproxy):
    assert ask(PROMPT).choices[0].message.content
    assert seedproxy.mode == EXPECT
    if EXPECT == "record":
        assert (seedproxy.hits, seedproxy.recorded, seedproxy.live) == (0, 1, 1)
    else:
        assert (seedproxy.hits, seedproxy.recorded, seedproxy.live) == (1, 0, 0)


@pytest.mark.seedproxy
def test_stream():
    chunks = list(ask("Stream it", stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.seedproxy
@pytest.mark.parametrize("topic", ["a/b", "c d"])
def test_topics(topic):
    assert ask(f"Tell me about {topic}").choices[0].message.content


@pytest.mark.seedproxy(cassette="shared")
class TestShared:
    def test_one(self):
        assert ask("one").choices[0].message.content

    def test_two(self):
        assert ask("two").choices[0].message.content
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, upstream, monkeypatch: pytest.MonkeyPatch):
    """A user's test module, and a function running pytest on it (with the fake upstream
    as the API, and the real key only when it is asked for)."""
    pytester.makepyfile(test_llm=SUITE)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str, expect: str = "record") -> pytest.RunResult:
        monkeypatch.setenv("EXPECT", expect)
        return pytester.runpytest_subprocess(
            *PLUGIN, "--seedproxy-upstream", f"{upstream.url}/v1", *args, timeout=180
        )

    return run


def cassettes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("cassettes/**/*.json"))
    }


def test_record_once_then_replay_offline_without_rewriting(
    suite, pytester, upstream, bg, monkeypatch
):
    first = suite()
    first.assert_outcomes(passed=6)
    recorded = cassettes(pytester.path)
    assert sorted(recorded) == [
        "cassettes/test_llm/shared.json",
        "cassettes/test_llm/test_hello.json",
        "cassettes/test_llm/test_stream.json",
        "cassettes/test_llm/test_topics[a-b].json",
        "cassettes/test_llm/test_topics[c-d].json",
    ]
    assert len(upstream.chat_calls) == 6
    assert len(orjson.loads(recorded["cassettes/test_llm/shared.json"])["interactions"]) == 2
    assert all(FAKE_KEY.encode() not in data for data in recorded.values())
    first.stdout.fnmatch_lines(["*cassette written: cassettes/test_llm/test_hello.json"])
    times = {p: p.stat().st_mtime_ns for p in pytester.path.rglob("cassettes/**/*.json")}

    bg.run(upstream.stop())  # offline: nothing to reach, and no key
    monkeypatch.delenv("OPENAI_API_KEY")
    for mode in ("replay", "once"):
        again = suite("--seedproxy-mode", mode, expect="replay")
        again.assert_outcomes(passed=6)
        assert "cassette written" not in again.stdout.str()
    assert cassettes(pytester.path) == recorded
    assert {p: p.stat().st_mtime_ns for p in times} == times


def test_a_changed_prompt_fails_in_replay_naming_the_field(suite, pytester, upstream, bg):
    suite("-k", "test_hello").assert_outcomes(passed=1)
    bg.run(upstream.stop())
    source = pytester.path / "test_llm.py"
    source.write_text(source.read_text().replace('"Say hello"', '"Say goodbye"'))
    result = suite("-k", "test_hello", "--seedproxy-mode", "replay", expect="replay")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*differs in: messages[[]0].content*"])


def test_unmarked_tests_reach_nothing_in_replay_and_swallowed_misses_fail(
    pytester, upstream, monkeypatch
):
    pytester.makepyfile(
        test_plain="""
        import openai

        def test_caught():
            try:
                openai.OpenAI().chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "hi"}]
                )
            except openai.APIStatusError as exc:
                assert exc.status_code == 504

        def test_models():
            openai.OpenAI().models.list()
        """
    )
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = pytester.runpytest_subprocess(
        *PLUGIN, "--seedproxy-upstream", f"{upstream.url}/v1", "--seedproxy-mode", "replay"
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*1 request(s) had no recording (the test caught the error, the run does not)*",
            "*runs in replay mode*",
        ]
    )
    assert "GET /v1/models is never recorded" in result.stdout.str()
    assert upstream.calls == []


def test_unused_recordings_are_listed_and_can_fail_the_run(suite, pytester, upstream, bg):
    pytester.makeini("[pytest]\nseedproxy_mode = record\n")
    suite().assert_outcomes(passed=6)
    bg.run(upstream.stop())
    source = pytester.path / "test_llm.py"
    source.write_text(source.read_text().replace('ask("two")', 'ask("one")'))
    listed = suite("--seedproxy-mode", "replay", expect="replay")
    listed.assert_outcomes(passed=6)
    assert listed.ret == 0
    listed.stdout.fnmatch_lines(
        ["*recording never played: cassettes/test_llm/shared.json #2 /v1/chat/completions*"]
    )
    failing = suite("--seedproxy-mode", "replay", "--seedproxy-fail-unused", expect="replay")
    failing.assert_outcomes(passed=6)
    assert failing.ret == pytest.ExitCode.TESTS_FAILED
    failing.stdout.fnmatch_lines(["*1 recording(s) never played (--seedproxy-fail-unused)*"])


def test_each_xdist_worker_has_its_own_proxy(suite, pytester, upstream, bg, monkeypatch):
    # per-test cassettes only: tests sharing one belong on one worker (--dist loadfile)
    per_test = SUITE.replace('cassette="shared"', "")
    pytester.makepyfile(test_llm=per_test, test_more=per_test.replace("Say hello", "Say hi"))
    suite("-n", "2").assert_outcomes(passed=12)
    written = cassettes(pytester.path)
    assert len(written) == 12
    assert "cassettes/test_more/TestShared.test_two.json" in written
    bg.run(upstream.stop())
    monkeypatch.delenv("OPENAI_API_KEY")
    replayed = suite("-n", "2", "--seedproxy-mode", "replay", expect="replay")
    replayed.assert_outcomes(passed=12)
    assert cassettes(pytester.path) == written


def test_cassette_names_are_safe_and_bounded():
    from proxy.pytest_plugin import cassette_name

    class Item:
        cls = None
        name = "test_x[" + "a/b:c" * 60 + "]"

    long = cassette_name(Item(), None)  # type: ignore[arg-type]
    assert len(long) <= 205 and "/" not in long and ":" not in long
    assert long != cassette_name(Item(), "test_x[other]")  # type: ignore[arg-type]
    assert cassette_name(Item(), "mine.json") == "mine.json"  # type: ignore[arg-type]
