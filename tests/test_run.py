"""`seedproxy run -- CMD` as users run it: a real process, real Python (openai SDK), Node
(`openai` npm package) and curl programs, the fake upstream, then offline replays."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from proxy.runmodes import PLACEHOLDER_KEY, pointed
from tests.harness import FAKE_KEY, clean_env, cli

PYTHON = """
import sys, openai
reply = openai.OpenAI().chat.completions.create(
    model="gpt-test", messages=[{"role": "user", "content": sys.argv[1]}])
print(reply.choices[0].message.content)
sys.exit(int(sys.argv[2]))
"""
NODE = """
const OpenAI = require("openai");
new OpenAI().chat.completions
  .create({ model: "gpt-test", messages: [{ role: "user", content: process.argv[2] }] })
  .then((reply) => {
    console.log(reply.choices[0].message.content);
    process.exit(Number(process.argv[3]));
  });
"""
CURL = """
body='{"model": "gpt-test", "messages": [{"role": "user", "content": "'"$1"'"}]}'
curl -sS "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" \\
  -H "Content-Type: application/json" -d "$body" \\
  | python3 -c "import json, sys; print(json.load(sys.stdin)['choices'][0]['message']['content'])"
exit $2
"""


@pytest.fixture(scope="session")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `openai` npm package, installed once into a directory of its own."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are missing: scripts/test installs Debian's nodejs and npm")
    where = tmp_path_factory.mktemp("node")
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent", "openai@4"],
        cwd=where,
        check=True,
        timeout=300,
        capture_output=True,
    )
    return where / "node_modules"


@pytest.fixture
def programs(tmp_path: Path) -> dict[str, Callable[[], list[str]]]:
    """Per language, the command line of a program that asks one question (its first
    argument) and exits with its second; Node's is built only when asked for."""
    (tmp_path / "ask.py").write_text(PYTHON)
    (tmp_path / "ask.js").write_text(NODE)
    (tmp_path / "ask.sh").write_text(CURL)
    return {
        "python": lambda: [sys.executable, str(tmp_path / "ask.py")],
        "node": lambda: ["node", str(tmp_path / "ask.js")],
        "curl": lambda: ["sh", str(tmp_path / "ask.sh")],
    }


@pytest.fixture
def seedproxy_run(tmp_path: Path, upstream, monkeypatch: pytest.MonkeyPatch):
    """`seedproxy run ARGS` in its own process, upstream = the fake one, key = the planted
    one unless ``key=None``; returns the process and its --summary-json."""
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)

    def go(*args: str, key: str | None = FAKE_KEY, env: dict[str, str] | None = None):
        summary = tmp_path / "summary.json"
        summary.unlink(missing_ok=True)
        base = clean_env()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy",
                "run",
                "--upstream",
                f"{upstream.url}/v1",
                "--summary-json",
                str(summary),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=base | ({"OPENAI_API_KEY": key} if key else {}) | (env or {}),
        )
        return result, orjson.loads(summary.read_bytes()) if summary.exists() else None

    return go


@pytest.mark.parametrize("language", ["python", "node", "curl"])
def test_record_then_replay_offline(
    language, programs, seedproxy_run, tmp_path, upstream, bg, request
):
    env = {"NODE_PATH": str(request.getfixturevalue("node_modules"))} if language == "node" else {}
    cassette = tmp_path / "llm.json"
    command = [*programs[language](), "Say hello"]
    recorded, summary = seedproxy_run("--cassette", str(cassette), "--", *command, "0", env=env)
    assert recorded.returncode == 0, recorded.stderr
    assert summary is not None
    assert (summary["mode"], summary["recorded"], summary["live_calls"], summary["hits"]) == (
        "record",
        1,
        1,
        0,
    )
    assert summary["tokens_live"] > 0 and summary["written"]
    assert FAKE_KEY not in cassette.read_text()
    written = cassette.stat().st_mtime_ns

    bg.run(upstream.stop())  # offline, and no key: the placeholder lets the SDKs start
    replayed, summary = seedproxy_run(
        "--cassette", str(cassette), "--", *command, "3", key=None, env=env
    )
    assert replayed.returncode == 3  # the program's own status
    assert replayed.stdout == recorded.stdout and recorded.stdout.strip()
    assert summary is not None
    assert (summary["mode"], summary["hits"], summary["live_calls"], summary["written"]) == (
        "replay",
        1,
        0,
        False,
    )
    assert "seedproxy: 1 hits, 0 recorded, 0 live calls" in replayed.stderr
    assert cassette.stat().st_mtime_ns == written


def test_modes(programs, seedproxy_run, tmp_path, upstream):
    cassette = tmp_path / "llm.json"
    ask = programs["curl"]()

    def run(mode: str, question: str) -> dict[str, object]:
        result, summary = seedproxy_run(
            "--cassette", str(cassette), "--mode", mode, "--", *ask, question, "0"
        )
        assert result.returncode == 0, result.stderr
        assert summary is not None
        return summary

    def questions() -> list[str]:
        data = orjson.loads(cassette.read_bytes())
        return [i["request"]["messages"][0]["content"] for i in data["interactions"]]

    run("record", "one")
    summary = run("record", "two")  # new ones are recorded, the rest kept
    assert questions() == ["one", "two"] and summary["unused_recordings"] == [
        "#1 /v1/chat/completions gpt-test"
    ]
    assert run("record", "one")["hits"] == 1
    summary = run("rewrite", "two")  # anew, from empty
    assert questions() == ["two"] and summary["recorded"] == 1

    upstream.nondeterministic = True
    before = cassette.read_bytes()
    summary = run("refresh", "two")  # live, compared, updated
    assert (summary["live_calls"], summary["drift_events"], summary["written"]) == (1, 1, True)
    (drifted,) = summary["drift"]  # per interaction: where, what first differs, a short diff
    assert drifted["cassette"] == str(cassette) and drifted["reason"] == "refresh"
    assert (drifted["endpoint"], drifted["model"]) == ("/v1/chat/completions", "gpt-test")
    assert drifted["path"] == "outputs[0].content"
    assert drifted["diff"].startswith("--- cached\n+++ live\n")
    assert any(line.startswith("+") for line in drifted["diff"].splitlines()[2:])
    assert cassette.read_bytes() != before and questions() == ["two"]

    calls = len(upstream.calls)
    _, summary = seedproxy_run("--cassette", str(cassette), "--", *ask, "three", "0")
    assert summary is not None and summary["replay_misses"] == 1 and summary["mode"] == "replay"
    message = summary["replay_miss_messages"][0]
    assert 'differs in: messages[0].content (recorded "two", sent "three")' in message
    assert f"replays the cassette {cassette} (seedproxy run --mode once)" in message
    assert "seedproxy run --mode record" in message and "seedproxy serve" not in message
    assert len(upstream.calls) == calls  # once, on an existing cassette: nothing went out


def test_without_a_cassette_the_cache_is_used(programs, seedproxy_run, tmp_path):
    ask = [*programs["curl"](), "hello", "0"]
    for hits in (0, 1):
        result, summary = seedproxy_run("--cache-dir", str(tmp_path / "c"), "--", *ask)
        assert result.returncode == 0, result.stderr
        assert summary is not None and summary["hits"] == hits
        assert summary["cassette"] is None


def test_failures_have_their_own_statuses(seedproxy_run, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 2, "interactions": [{"endpoint": "/v1/chat/completions"}]}')
    result, summary = seedproxy_run("--cassette", str(bad), "--", "true")
    assert result.returncode == 125 and summary is None
    assert "the proxy did not start" in result.stderr and "interaction 1" in result.stderr
    result, _ = seedproxy_run("--", "no-such-program-here")
    assert result.returncode == 127 and "command not found" in result.stderr
    result, _ = seedproxy_run("--cassette", str(bad), "--mode", "passthrough", "--", "true")
    assert result.returncode == 2 and "--mode" in result.stderr
    killed, _ = seedproxy_run("--", "sh", "-c", "kill -TERM $$")
    assert killed.returncode == 128 + 15


def test_the_users_openai_base_url_is_the_default_upstream(programs, tmp_path, upstream):
    """Without --upstream, the program's own OPENAI_BASE_URL is where answers come from,
    and the start-up line says so; the program itself is pointed at the proxy."""
    env = clean_env() | {"OPENAI_API_KEY": FAKE_KEY, "OPENAI_BASE_URL": f"{upstream.url}/v1"}
    command = [*programs["curl"](), "hello", "0"]
    cassette = ["--cassette", str(tmp_path / "llm.json")]
    result = cli("run", *cassette, "--", *command, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"upstream {upstream.url}/v1 (from OPENAI_BASE_URL) | mode record" in result.stderr
    assert len(upstream.chat_calls) == 1
    env.pop("OPENAI_BASE_URL")
    result = cli(
        "run", "--mode", "replay", *cassette, "--", *command, cwd=tmp_path, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "upstream https://api.openai.com/v1 (from default) | mode replay" in result.stderr


def test_a_proxy_of_this_process_is_never_its_own_upstream():
    from proxy.run import Session, chosen_upstream

    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    assert chosen_upstream(None, "--upstream", env) == ("http://127.0.0.1:9/v1", "OPENAI_BASE_URL")
    assert chosen_upstream("http://x/v1", "--upstream", env) == ("http://x/v1", "--upstream")
    Session.serving.add("http://127.0.0.1:9/v1")
    try:
        assert chosen_upstream(None, "--upstream", env) == (None, "upstream.base_url")
    finally:
        Session.serving.discard("http://127.0.0.1:9/v1")


def test_a_miss_shows_values_truncated_and_redacted():
    from proxy.answers import SHOWN_CHARS, _shown
    from proxy.config import load_settings
    from proxy.keys import value_at

    settings = load_settings(None, {})
    body = {"messages": [{"content": "x" * 1_000_000}], "n": 2, "tools": [{"a": [1, 2]}]}
    assert value_at(body, "messages[0].content") == (True, "x" * 1_000_000)
    assert value_at(body, "tools[0].a[1]") == (True, 2)
    assert value_at(body, "messages[1].content") == (False, None)
    assert value_at(body, "n.x") == (False, None)
    long = _shown(body, "messages[0].content", settings)
    assert len(long) == SHOWN_CHARS and long.endswith("…")
    assert _shown(body, "temperature", settings) == "nothing"
    secret = {"messages": [{"content": "key sk-proj-" + "A1b2C3d4" * 12}]}
    shown = _shown(secret, "messages[0].content", settings)
    assert "A1b2C3d4" not in shown and "REDACTED" in shown


@pytest.mark.parametrize(
    ("mode", "key", "placeholder"),
    [
        ("replay", None, True),
        ("replay", "", True),
        ("replay", FAKE_KEY, False),
        ("record", None, False),
        ("auto", None, False),
    ],
)
def test_the_one_rule_for_pointing_a_program_at_the_proxy(mode, key, placeholder):
    """``seedproxy run`` and the pytest plugin both set the environment with
    :func:`~proxy.runmodes.pointed`: the proxy's URL under both names, and a placeholder
    key only when replaying without a key of the user's (which is never replaced)."""
    base = {"OPENAI_BASE_URL": "https://user.example/v1"} | (
        {} if key is None else {"OPENAI_API_KEY": key}
    )
    url = "http://127.0.0.1:1/v1"
    env = pointed(base, url, mode)
    expected = {"OPENAI_BASE_URL": url, "OPENAI_API_BASE": url}
    assert env == expected | ({"OPENAI_API_KEY": PLACEHOLDER_KEY} if placeholder else {})
