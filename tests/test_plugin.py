"""The pytest plugin, as a user's test suite meets it: real pytest runs (pytester, in their
own processes), the official SDK creating its client at import time, the fake upstream."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.harness import FAKE_KEY, BackgroundLoop
from tests.upstream import FakeUpstream

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
    assert seedproxy.mode == EXPECT and type(seedproxy.mode) is str  # a plain name
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


# Variables a user's shell would not have here: the API's (each test sets its own) and this
# suite's own run's (an xdist worker's would make the pytest it starts, and that one's
# workers, believe they are workers).
def _outer(name: str) -> bool:
    return name.startswith(("OPENAI_", "PYTEST_XDIST_")) or name == "PYTEST_ADDOPTS"


@pytest.fixture
def suite(pytester: pytest.Pytester, upstream, monkeypatch: pytest.MonkeyPatch):
    """A user's test module, and a function running pytest on it (with the fake upstream
    as the API, and the real key only when it is asked for)."""
    pytester.makepyfile(test_llm=SUITE)
    for name in filter(_outer, list(os.environ)):
        monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)

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


@dataclass(frozen=True)
class Recorded:
    """SUITE's first run, with nothing recorded yet (mode once), made once per module (per
    xdist worker): what it printed, what the upstream was sent, the cassettes it wrote."""

    result: pytest.RunResult
    upstream: str
    sent: list[dict[str, Any]]
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """The one recording of SUITE that the tests starting from a recorded suite copy: made
    as ``suite`` runs pytest (its own process, directory and home; the fake upstream)."""
    root = tmp_path_factory.mktemp("recorded")
    (root / "test_llm.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if not _outer(k)} | {
        "OPENAI_API_KEY": FAKE_KEY,
        "EXPECT": "record",
        "HOME": str(root),
        "PY_COLORS": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    bg, fake = BackgroundLoop(), FakeUpstream()
    upstream = ["--seedproxy-upstream", f"{bg.run(fake.start())}/v1"]
    try:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", f"--basetemp={root / 'tmp'}", *PLUGIN, *upstream],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        bg.run(fake.stop())
        bg.close()
    outcome = pytest.RunResult(
        done.returncode,
        done.stdout.splitlines(),
        done.stderr.splitlines(),
        time.monotonic() - started,
    )
    return Recorded(outcome, fake.url, [c.json() for c in fake.chat_calls], cassettes(root))


@pytest.fixture
def ran_once(pytester: pytest.Pytester, recorded: Recorded) -> None:
    """``suite`` after its first run: the recorded cassettes copied into its directory."""
    recorded.result.assert_outcomes(passed=6)
    for name, data in recorded.files.items():
        (pytester.path / name).parent.mkdir(parents=True, exist_ok=True)
        (pytester.path / name).write_bytes(data)


@pytest.mark.usefixtures("ran_once")
def test_record_once_then_replay_offline_without_rewriting(
    recorded, suite, pytester, upstream, bg, monkeypatch
):
    first = recorded.result  # the first run, on a suite with no cassette yet
    first.assert_outcomes(passed=6)
    assert sorted(recorded.files) == [
        "cassettes/test_llm/shared.json",
        "cassettes/test_llm/test_hello.json",
        "cassettes/test_llm/test_stream.json",
        "cassettes/test_llm/test_topics[a-b]-0da27a559581.json",  # "a/b": a lossy name
        "cassettes/test_llm/test_topics[c-d]-1b14f1271c81.json",
    ]
    assert len(recorded.sent) == 6
    shared = recorded.files["cassettes/test_llm/shared.json"]
    assert len(orjson.loads(shared)["interactions"]) == 2
    assert all(FAKE_KEY.encode() not in data for data in recorded.files.values())
    first.stdout.fnmatch_lines(
        [
            f"seedproxy: proxy http://127.0.0.1:*/v1 | upstream {recorded.upstream}/v1 "
            "(from --seedproxy-upstream) | mode once",
            "*cassette written: cassettes/test_llm/test_hello.json",
        ]
    )
    times = {p: p.stat().st_mtime_ns for p in pytester.path.rglob("cassettes/**/*.json")}

    bg.run(upstream.stop())  # offline: nothing to reach, and no key
    monkeypatch.delenv("OPENAI_API_KEY")
    for mode in ("replay", "once"):
        again = suite("--seedproxy-mode", mode, expect="replay")
        again.assert_outcomes(passed=6)
        assert "cassette written" not in again.stdout.str()
    assert cassettes(pytester.path) == recorded.files
    assert {p: p.stat().st_mtime_ns for p in times} == times


@pytest.mark.usefixtures("ran_once")
def test_a_changed_prompt_fails_in_replay_naming_the_field(suite, pytester, upstream, bg):
    bg.run(upstream.stop())
    source = pytester.path / "test_llm.py"
    source.write_text(source.read_text().replace('"Say hello"', '"Say goodbye"'))
    result = suite("-k", "test_hello", "--seedproxy-mode", "replay", expect="replay")
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines(
        [
            r".*no recorded response for this /v1/chat/completions request \(key \w+\) and "
            r"replays the test's cassette \S+/cassettes/test_llm/test_hello.json "
            r"\(--seedproxy-mode replay\), so it will not call the upstream\. The nearest .*"
            r'differs in: messages\[0\]\.content \(recorded "Say hello", sent "Say goodbye"\)\. '
            r"To record it, run the test with --seedproxy-mode record \(adds it to the "
            r"cassette\) or --seedproxy-mode rewrite \(records the cassette anew\), or mark it "
            r'@pytest\.mark\.seedproxy\(mode="record"\).*'
        ]
    )
    assert "seedproxy serve" not in result.stdout.str()


INERT = """
import os, sys, threading

import openai
import pytest

def env():
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


USER = env()


def untouched():
    assert env() == USER
    assert not any(t.name == "seedproxy" for t in threading.enumerate())


def ask(content):
    client = openai.OpenAI()  # made in the test: it reads the environment now
    return client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": content}]
    )


def test_before():
    untouched()
    assert "proxy.run" not in sys.modules  # nothing of the proxy was even imported
    assert ask("plain one").choices[0].message.content


@pytest.mark.seedproxy
def test_marked():
    assert os.environ["OPENAI_BASE_URL"] != USER["OPENAI_BASE_URL"]
    assert ask("recorded").choices[0].message.content


def test_after():
    assert env() == USER
    assert ask("plain two").choices[0].message.content
"""


def test_unused_the_plugin_is_inert_and_a_marked_test_starts_it(pytester, upstream, monkeypatch):
    pytester.makepyfile(test_inert=INERT)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{upstream.url}/v1")  # the user's own upstream
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    result = pytester.runpytest_subprocess(*PLUGIN, "-k", "not marked")
    result.assert_outcomes(passed=2)
    assert (
        "= seedproxy =" not in result.stdout.str() and "seedproxy: proxy" not in result.stdout.str()
    )
    assert [c.json() for c in upstream.chat_calls] == [  # as sent: no seed added
        {"model": "gpt-test", "messages": [{"role": "user", "content": c}]}
        for c in ("plain one", "plain two")
    ]
    assert not (pytester.path / "cassettes").exists()

    upstream.calls.clear()
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            f"upstream {upstream.url}/v1 (from OPENAI_BASE_URL) | mode once",
            "cassette written: cassettes/test_inert/test_marked.json",
        ]
    )
    sent = [c.json() for c in upstream.chat_calls]
    assert [m["messages"][0]["content"] for m in sent] == ["plain one", "recorded", "plain two"]
    assert "seed" not in sent[0] and "seed" not in sent[2] and sent[1]["seed"] == 12345


OPTED_IN = """
import os

import openai
import pytest

client = openai.OpenAI()  # at import time: served because the project opted in
USER_URL = os.environ["USER_URL"]


def ask(content):
    return client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": content}]
    )


def test_unmarked_goes_on_untouched():
    assert os.environ["OPENAI_BASE_URL"] == USER_URL  # as the user set it
    assert ask("not recorded").choices[0].message.content


@pytest.mark.seedproxy
def test_caught():
    try:
        ask("never recorded")
    except openai.APIStatusError as exc:
        assert exc.status_code == 504


@pytest.mark.seedproxy
def test_models():
    client.models.list()
"""


def test_opted_in_import_time_clients_are_served_and_unmarked_tests_pass_through(
    pytester, upstream, monkeypatch
):
    pytester.makepyfile(test_opted=OPTED_IN)
    pytester.makeini("[pytest]\nseedproxy_mode = replay\n")
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{upstream.url}/v1")
    monkeypatch.setenv("USER_URL", f"{upstream.url}/v1")
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*1 request(s) had no recording (the test caught the error, the run does not)*",
            "*no recorded response*",
        ]
    )
    assert "GET /v1/models is never recorded" in result.stdout.str()
    assert [c.json() for c in upstream.calls] == [  # only the unmarked test's, as sent
        {"model": "gpt-test", "messages": [{"role": "user", "content": "not recorded"}]}
    ]
    assert not (pytester.path / "cassettes").exists()


VCR_SUITE = """
import openai
import pytest


@pytest.mark.vcr
def test_vcr():
    reply = openai.OpenAI().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert reply.choices[0].message.content
"""


def test_a_pytest_recording_suite_records_and_replays_as_without_seedproxy(
    pytester, upstream, bg, monkeypatch
):
    import yaml

    pytester.makepyfile(test_vcr=VCR_SUITE)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{upstream.url}/v1")
    written = pytester.path / "cassettes" / "test_vcr" / "test_vcr.yaml"

    def record(*plugin: str) -> dict[str, object]:
        written.unlink(missing_ok=True)
        pytester.runpytest_subprocess(*plugin, "--record-mode=once").assert_outcomes(passed=1)
        (interaction,) = yaml.safe_load(written.read_text())["interactions"]
        return interaction["request"]

    assert record(*PLUGIN) == record("-p", "no:seedproxy")
    recorded = written.read_bytes()  # made without seedproxy: replayed with it, unchanged
    bg.run(upstream.stop())
    result = pytester.runpytest_subprocess(*PLUGIN, "--record-mode=none")
    result.assert_outcomes(passed=1)
    assert written.read_bytes() == recorded


@pytest.mark.usefixtures("ran_once")
def test_unused_recordings_are_listed_and_can_fail_the_run(suite, pytester, upstream, bg):
    bg.run(upstream.stop())
    source = pytester.path / "test_llm.py"
    original = source.read_text()
    source.write_text(original.replace('ask("two")', 'ask("one")'))
    listed = suite("--seedproxy-mode", "replay", expect="replay")
    listed.assert_outcomes(passed=6)
    assert listed.ret == 0
    listed.stdout.fnmatch_lines(
        ["*recording never played: cassettes/test_llm/shared.json #2 /v1/chat/completions*"]
    )
    failing = suite("--seedproxy-mode", "replay", "--seedproxy-fail-unused", expect="replay")
    failing.assert_outcomes(passed=6)
    assert failing.ret == pytest.ExitCode.TESTS_FAILED
    failing.stdout.fnmatch_lines(
        ["*1 recording(s) never played, 0 cassette file(s) no test uses (--seedproxy-fail-unused)"]
    )
    # a renamed test leaves its old cassette behind: a file no collected test uses
    source.write_text(original)
    folder = pytester.path / "cassettes" / "test_llm"
    (folder / "test_old_name.json").write_bytes((folder / "test_hello.json").read_bytes())
    orphan = suite("--seedproxy-mode", "replay", "--seedproxy-fail-unused", expect="replay")
    orphan.assert_outcomes(passed=6)
    assert orphan.ret == pytest.ExitCode.TESTS_FAILED
    orphan.stdout.fnmatch_lines(
        [
            "cassette file no test uses: cassettes/test_llm/test_old_name.json",
            "*0 recording(s) never played, 1 cassette file(s) no test uses*",
        ]
    )
    # a run of some tests only: the other tests' cassettes are not unused
    narrowed = "test_llm.py::test_hello"
    result = suite(
        "--seedproxy-mode", "replay", "--seedproxy-fail-unused", narrowed, expect="replay"
    )
    assert result.ret == 0 and "no test uses" not in result.stdout.str()


@pytest.mark.parametrize(
    "narrowed",
    [
        ["-k", "test_hello"],
        ["-m", "seedproxy"],
        ["test_llm.py::test_hello"],
        ["--deselect", "test_llm.py::test_stream"],
        ["--lf"],
    ],
)
def test_each_way_to_run_some_tests_only_is_seen(pytester, narrowed):
    """What --seedproxy-fail-unused asks of a run before it names a cassette file no test
    uses: that every test ran (the previous test runs one of these ways end to end)."""
    from proxy.pytest_plugin import _narrowed

    assert _narrowed(pytester.parseconfig("-p", "no:seedproxy", *narrowed))
    assert not _narrowed(pytester.parseconfig("-p", "no:seedproxy", "test_llm.py"))


@pytest.mark.usefixtures("ran_once")
def test_drift_is_listed_per_test_and_can_fail_it(suite, upstream):
    chosen = "test_stream or TestShared"
    upstream.nondeterministic = True
    warned = suite("-k", chosen, "--seedproxy-mode", "refresh")
    warned.assert_outcomes(passed=3)
    warned.stdout.fnmatch_lines(
        [
            "*= seedproxy =*",
            "drift in 3 test(s):",
            "test_llm.py::TestShared::test_one: cassette cassettes/test_llm/shared.json",
            "  /v1/chat/completions gpt-test: first difference at outputs[[]0].content *",
            "    --- cached",
            "    +++ live",
            "     [[]choice 0] finish_reason=stop",
            "    -*",
            "test_llm.py::TestShared::test_two: cassette cassettes/test_llm/shared.json",
            "test_llm.py::test_stream: cassette cassettes/test_llm/test_stream.json",
        ]
    )
    failed = suite("-k", "test_stream", "--seedproxy-mode", "refresh", "--seedproxy-drift=fail")
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(
        [
            "*seedproxy: the live answers differ from the recordings:",
            "*drift in 1 test(s) (--seedproxy-drift=fail: they failed):",
        ]
    )


SHARING = """
import openai, pytest

@pytest.mark.seedproxy(cassette="shared")
@pytest.mark.parametrize("n", range(8))
def test_n(n):
    reply = openai.OpenAI().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": f"question {n}"}])
    assert reply.choices[0].message.content
"""


def test_xdist_workers_each_have_a_proxy_and_lose_nothing_of_a_cassette_they_share(
    suite, pytester, upstream, bg, monkeypatch
):
    """Two workers, each with its proxy: two modules of per-test cassettes, and one
    cassette that tests on both workers record into (once, then anew), replayed offline."""
    # per-test cassettes in these two modules; test_shared's tests share one
    per_test = SUITE.replace('cassette="shared"', "")
    pytester.makepyfile(
        test_llm=per_test, test_more=per_test.replace("Say hello", "Say hi"), test_shared=SHARING
    )
    # test_shared.py first: xdist hands each worker its first tests from the front
    modules = ("-n", "2", "-v", "test_shared.py", "test_llm.py", "test_more.py")
    shared = pytester.path / "cassettes" / "test_shared" / "shared.json"

    def run(mode: str, expect: str = "record") -> dict[str, bytes]:
        result = suite(*modules, "--seedproxy-mode", mode, expect=expect)
        result.assert_outcomes(passed=20)
        workers = re.findall(r"^\[(gw\d)\] .*PASSED test_shared\.py", result.stdout.str(), re.M)
        assert set(workers) == {"gw0", "gw1"}, "the shared cassette's tests ran on one worker"
        return cassettes(pytester.path)

    for mode in ("once", "rewrite"):
        written = run(mode)
        questions = sorted(
            i["request"]["messages"][0]["content"]
            for i in orjson.loads(shared.read_bytes())["interactions"]
        )
        assert questions == [f"question {n}" for n in range(8)]
        per_test_files = [name for name in written if "test_shared" not in name]
        assert len(per_test_files) == 12
        assert "cassettes/test_more/TestShared.test_two.json" in per_test_files
    bg.run(upstream.stop())
    monkeypatch.delenv("OPENAI_API_KEY")
    assert run("replay", expect="replay") == written


def name_of(test_id: str, cassette: str | None = None) -> str:
    from proxy.pytest_plugin import cassette_name

    class Item:
        cls = None
        name = test_id

    return cassette_name(Item(), cassette)  # type: ignore[arg-type]


def test_lossy_cassette_names_never_collide_and_stay_bounded_in_bytes():
    ids = [f"test_summarise_file[docs{c}a{d}b.md]" for c in "/ ?" for d in " /?"]
    names = [name_of(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert all("/" not in n and " " not in n and "?" not in n for n in names)
    # a safe name is kept as it is (existing cassettes keep loading)
    assert name_of("test_topics[a-b]") == "test_topics[a-b].json"
    assert name_of("x", "mine.json") == name_of("x", "mine") == "mine.json"
    assert name_of("x", "mine.jsonl") == "mine.jsonl"
    assert name_of("test_x[\u00e9t\u00e9]") == "test_x[\u00e9t\u00e9].json"
    long = name_of("test_x[" + "a/b:c" * 60 + "]")
    assert long != name_of("test_x[" + "a/b:c" * 59 + "a/b:d]")
    for wide in ("\u00e9" * 300, "\u65e5\u672c" * 200, "\U0001f600" * 100):
        name = name_of(f"test_x[{wide}]")
        assert len(name.encode()) <= 255 and name.endswith(".json")
        assert name != name_of(f"test_x[{wide}x]")
        name.encode().decode()  # cut on a character boundary


def test_a_long_non_ascii_test_name_records(pytester, upstream, monkeypatch):
    pytester.makepyfile(
        test_wide="""
        import openai, pytest

        @pytest.mark.seedproxy
        @pytest.mark.parametrize("topic", ["\u65e5\u672c\u8a9e" * 40])
        def test_wide(topic):
            openai.OpenAI().chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": topic[:9]}])
        """
    )
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{upstream.url}/v1")
    pytester.runpytest_subprocess(*PLUGIN).assert_outcomes(passed=1)
    (written,) = (pytester.path / "cassettes" / "test_wide").iterdir()
    assert len(written.name.encode()) <= 255
