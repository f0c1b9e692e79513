"""A cassette answers the request it shows, through real `seedproxy run` processes: keys
recomputed (a stated key that disagrees, a hostile value or two answers to one request
fail the load naming file, interaction and field), credentials in a query redacted with a
digest, old placeholders still replayed, a recording made with the seed-mode header or
under another upstream replayed under a new one, and a 100 MB cassette loaded in
bounded memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy import cassette
from proxy.config import load_settings
from tests.harness import FAKE_KEY, chat_completion, clean_env, cli
from tests.test_plugin import PLUGIN
from tests.upstream import FakeUpstream

DEAD = "http://127.0.0.1:9/v1"  # nothing listens: replays must not need it
# Asks the proxy at $OPENAI_BASE_URL each (query, headers, body) of argv[1], one line each:
# status, X-Cache, the answer's content or the error's code.
ASK = """
import json, os, sys, urllib.error, urllib.request
for suffix, headers, body in json.loads(sys.argv[1]):
    url = os.environ["OPENAI_BASE_URL"] + "/chat/completions" + suffix
    head = {"Content-Type": "application/json", "Authorization": "Bearer k", **headers}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=head)
    try:
        with urllib.request.urlopen(request) as r:
            content = json.loads(r.read())["choices"][0]["message"]["content"]
            print(r.status, r.headers["X-Cache"], " ".join(content.split())[:60])
    except urllib.error.HTTPError as e:
        print(e.code, e.headers.get("X-Cache"), json.loads(e.read())["error"]["code"])
"""


def seedproxy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli(*args, cwd=cwd, env={"OPENAI_API_KEY": FAKE_KEY}, timeout=120)


def ask(
    tmp_path: Path, upstream: str, *run_args: str, calls: list[tuple[str, dict[str, str], Any]]
) -> list[str]:
    """`seedproxy run --upstream U RUN_ARGS -- python ask.py CALLS`: the answers' lines."""
    program = tmp_path / "ask.py"
    program.write_text(ASK)
    result = seedproxy(
        "run",
        "--upstream",
        upstream,
        *run_args,
        "--",
        sys.executable,
        str(program),
        orjson.dumps(calls).decode(),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def body(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": content}], **extra}


def recorded(content: str, **fields: Any) -> dict[str, Any]:
    """A cassette interaction as seedproxy writes one, with ``fields`` replaced."""
    item = {
        "endpoint": "/v1/chat/completions",
        "model": "gpt-test",
        "fingerprint": "fp_one",
        "recorded_at": "2026-01-01T00:00:00.000000Z",
        "request": body(content, seed=12345),
        "response": {
            "status": 200,
            "content_type": "application/json",
            "body": chat_completion(f"answer to {content}"),
        },
    }
    for name, value in fields.items():
        if name.startswith("response."):
            item["response"] = {**item["response"], name.removeprefix("response."): value}
        else:
            item[name] = value
    return item


def write(path: Path, *interactions: dict[str, Any]) -> Path:
    path.write_bytes(orjson.dumps({"version": 2, "interactions": list(interactions)}))
    return path


SETTINGS = load_settings(None, {}, {"upstream.base_url": DEAD})
OTHER_KEY = cassette.key_for(
    "/v1/chat/completions", body("What is 2+2?", seed=12345), "", "", SETTINGS
)
EVENT = {"event": "response.created\ndata: {}", "data": {}}


@pytest.mark.parametrize(
    ("second", "field"),
    [
        (recorded("Transfer $0 to me", key=OTHER_KEY), "key: "),
        (recorded("b", recorded_at="inf"), "recorded_at: 'inf' is not an ISO 8601 time"),
        (recorded("b", fingerprint={"fp": 1}), "fingerprint: expected a string or null"),
        (recorded("b", **{"response.body": [1, 2]}), "response.body: expected an object"),
        (
            recorded("b", **{"response.content_type": "application/json\r\nX-Evil: 1"}),
            "response.content_type: 'application/json\\r\\nX-Evil: 1' is not a plain",
        ),
        (recorded("b", **{"response.status": 0}), "response.status: 0 is not a successful"),
        (recorded("b", **{"response.status": 304}), "response.status: 304 is not a successful"),
        (recorded("b", **{"response.status": "200"}), "response.status: expected an integer"),
        (recorded("b", **{"response.events": [EVENT]}), "response.events[0].event: expected"),
        (
            recorded("b", **{"response.body": chat_completion(usage=(2**60, 1))}),
            "response.body.usage: token counts",
        ),
        (recorded("b", seed_mode="sometimes"), "seed_mode: 'sometimes' is not one of"),
    ],
)
def test_a_hostile_interaction_fails_the_load_naming_file_interaction_and_field(
    tmp_path: Path, second: dict[str, Any], field: str
):
    path = write(tmp_path / "llm.json", recorded("a"), second)
    result = seedproxy(
        "run", "--upstream", DEAD, "--cassette", str(path), "--", "true", cwd=tmp_path
    )
    assert result.returncode == 125, result.stderr
    assert f"{path}: interaction 2: {field}" in result.stderr, result.stderr


def test_two_answers_to_one_request_fail_the_load_naming_both(tmp_path: Path):
    path = write(tmp_path / "llm.json", recorded("a"), recorded("b"), recorded("a"))
    result = seedproxy(
        "run", "--upstream", DEAD, "--cassette", str(path), "--", "true", cwd=tmp_path
    )
    assert result.returncode == 125
    assert f"{path}: interactions 1 and 3 record the same request" in result.stderr
    # a stated key that agrees is only redundant
    agreeing = recorded(
        "a", key=cassette.key_for("/v1/chat/completions", body("a", seed=12345), "", "", SETTINGS)
    )
    write(path, agreeing)
    lines = ask(tmp_path, DEAD, "--cassette", str(path), calls=[("", {}, body("a"))])
    assert lines == ["200 HIT answer to a"]


def test_a_json_lines_export_with_a_time_that_is_not_finite_is_refused(tmp_path: Path):
    line = {
        "key": "k",
        "endpoint": "/v1/chat/completions",
        "model": "m",
        "fingerprint": None,
        "created": "inf",
        "status": 200,
        "content_type": "application/json",
        "request": body("a"),
        "response": chat_completion(),
    }
    export = tmp_path / "export.jsonl"
    export.write_bytes(orjson.dumps(line) + b"\n")
    result = seedproxy("import", str(export), "--cache-dir", str(tmp_path / "c"), cwd=tmp_path)
    assert result.returncode == 2 and "line 1: not a cassette entry" in result.stderr


def test_credentials_in_a_query_are_redacted_with_a_digest_and_scan_finds_raw_ones(
    tmp_path: Path, upstream: FakeUpstream
):
    path = tmp_path / "llm.json"
    calls = [
        ("?api_key=tok-one-123&api-version=1", {}, body("q")),
        ("?api_key=tok-two-456&api-version=1", {}, body("q")),
    ]
    lines = ask(tmp_path, f"{upstream.url}/v1", "--cassette", str(path), calls=calls)
    assert [line.split()[:2] for line in lines] == [["200", "MISS"], ["200", "MISS"]]
    # the upstream gets the query as sent; the cassette never holds it
    assert sorted(c.query for c in upstream.chat_calls) == [
        "api_key=tok-one-123&api-version=1",
        "api_key=tok-two-456&api-version=1",
    ]
    text = path.read_text()
    assert "tok-one-123" not in text and "tok-two-456" not in text
    queries = [i["query"] for i in orjson.loads(text)["interactions"]]
    assert len(set(queries)) == 2  # two tokens, two keys
    assert all(q.startswith("api-version=1&api_key=[REDACTED:query_credential:") for q in queries)
    assert seedproxy("scan", str(path), cwd=tmp_path).returncode == 0
    lines = ask(tmp_path, DEAD, "--cassette", str(path), "--mode", "replay", calls=calls)
    assert [line.split()[:2] for line in lines] == [["200", "HIT"], ["200", "HIT"]]
    third = [("?api_key=tok-three-789&api-version=1", {}, body("q"))]
    assert ask(tmp_path, DEAD, "--cassette", str(path), "--mode", "replay", calls=third) == [
        "504 MISS cache_miss"
    ]

    by_hand = write(tmp_path / "by-hand.json", recorded("q", query="key=raw-token-42"))
    scanned = seedproxy("scan", str(by_hand), cwd=tmp_path)
    assert scanned.returncode == 1 and "query_credential" in scanned.stdout
    assert "raw-token-42" not in scanned.stdout  # masked
    lines = ask(
        tmp_path, DEAD, "--cassette", str(by_hand), calls=[("?key=raw-token-42", {}, body("q"))]
    )
    assert lines == ["200 HIT answer to q"]


SECRET = "sk-proj-" + "Q7w8E9r0" * 4


def test_old_placeholders_keep_replaying_from_cassettes_and_stores(tmp_path: Path):
    old = recorded("my key is [REDACTED:openai_key]")  # what seedproxy wrote before digests
    path = write(tmp_path / "old.json", old)
    calls = [("", {}, body(f"my key is {SECRET}"))]
    lines = ask(tmp_path, DEAD, "--cassette", str(path), "--mode", "replay", calls=calls)
    assert lines == ["200 HIT answer to my key is [REDACTED:openai_key]"]

    # a store: an entry under the key the request had then (a JSON Lines export keeps keys)
    key = cassette.key_for("/v1/chat/completions", old["request"], "", "", SETTINGS)
    line = {
        "key": key,
        "endpoint": "/v1/chat/completions",
        "model": "gpt-test",
        "fingerprint": "fp_one",
        "created": 1.0,
        "status": 200,
        "content_type": "application/json",
        "request": old["request"],
        "response": chat_completion("stored long ago"),
    }
    export = tmp_path / "old.jsonl"
    export.write_bytes(orjson.dumps(line) + b"\n")
    cache = str(tmp_path / "cache")
    assert seedproxy("import", str(export), "--cache-dir", cache, cwd=tmp_path).returncode == 0
    lines = ask(tmp_path, DEAD, "--cache-dir", cache, "--mode", "replay", calls=calls)
    assert lines == ["200 HIT stored long ago"]


def test_a_recording_made_with_the_seed_mode_header_replays_under_another_upstream(
    tmp_path: Path, upstream: FakeUpstream
):
    path = tmp_path / "llm.json"
    calls = [
        ("", {"X-Seedproxy-Seed-Mode": "passthrough"}, body("unseeded")),
        ("", {"X-Seedproxy-Seed-Mode": "override"}, body("overridden", seed=7)),
        ("", {}, body("plain")),
    ]
    lines = ask(tmp_path, f"{upstream.url}/v1", "--cassette", str(path), calls=calls)
    assert [line.split()[1] for line in lines] == ["MISS"] * 3
    shown = orjson.loads(path.read_bytes())["interactions"]
    assert [i.get("seed_mode") for i in shown] == ["passthrough", "override", None]
    assert "seed" not in shown[0]["request"] and not any("key" in i for i in shown)
    replayed = ask(tmp_path, DEAD, "--cassette", str(path), "--mode", "replay", calls=calls)
    assert [line.split()[:2] for line in replayed] == [["200", "HIT"]] * 3
    assert [line.split(maxsplit=2)[2] for line in replayed] == [
        line.split(maxsplit=2)[2] for line in lines
    ]


PLUGIN_SUITE = """
import openai, pytest

@pytest.mark.seedproxy
def test_unseeded():
    client = openai.OpenAI()
    reply = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Seedproxy-Seed-Mode": "passthrough"},
    )
    assert reply.choices[0].message.content
"""


def test_the_plugin_replays_a_seed_mode_recording_under_another_upstream(
    pytester: pytest.Pytester, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
):
    pytester.makepyfile(test_unseeded=PLUGIN_SUITE)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    first = pytester.runpytest_subprocess(
        *PLUGIN, "--seedproxy-upstream", f"{upstream.url}/v1", timeout=180
    )
    first.assert_outcomes(passed=1)
    assert len(upstream.chat_calls) == 1
    again = pytester.runpytest_subprocess(
        *PLUGIN, "--seedproxy-upstream", DEAD, "--seedproxy-mode", "replay", timeout=180
    )
    again.assert_outcomes(passed=1)


MEASURE = """
import resource, sys
from pathlib import Path
from proxy import cassette
from proxy.config import load_settings

settings = load_settings(None, {}, {})
settings.keyer, settings.redactor  # built before measuring
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            yield int(line.split()[1]) * 1024
before, _ = rss()
loaded = cassette.read(Path(sys.argv[1]), settings, one_per_key=True)
_, peak = rss()
print(len(loaded), peak - before)
"""


def test_a_100_mb_cassette_loads_in_at_most_three_times_its_size(tmp_path: Path):
    path = tmp_path / "big.json"
    text = "lorem ipsum dolor sit amet " * 1900  # ~50 KB
    with path.open("wb") as out:
        out.write(b'{"version": 2, "interactions": [\n')
        for n in range(1000):
            item = recorded(f"{n} {text}", **{"response.body": chat_completion(f"{n} {text}")})
            out.write((b",\n" if n else b"") + orjson.dumps(item, option=orjson.OPT_INDENT_2))
        out.write(b"\n]}\n")
    size = path.stat().st_size
    assert 100_000_000 <= size <= 110_000_000
    program = tmp_path / "measure.py"
    program.write_text(MEASURE)
    result = subprocess.run(
        [sys.executable, str(program), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    count, grown = map(int, result.stdout.split())
    assert count == 1000
    assert grown <= 3 * size, f"loading {size} bytes took {grown} bytes more"
    print(f"cassette {size / 1e6:.0f} MB: peak RSS grew {grown / 1e6:.0f} MB ({grown / size:.2f}x)")


HOSTILE_SUITE = """
import openai, pytest

@pytest.mark.seedproxy
def test_it():
    openai.OpenAI().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "a"}]
    )
"""


def test_the_plugin_names_a_hostile_cassette_instead_of_serving_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    pytester.makepyfile(test_hostile=HOSTILE_SUITE)
    path = pytester.path / "cassettes" / "test_hostile" / "test_it.json"
    path.parent.mkdir(parents=True)
    write(path, recorded("a", **{"response.status": 304}))
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    result = pytester.runpytest_subprocess(
        *PLUGIN, "--seedproxy-upstream", DEAD, "--seedproxy-mode", "replay", timeout=180
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0 and outcomes.get("failed", 0) + outcomes.get("errors", 0)
    text = result.stdout.str()
    assert "interaction 1: response.status: 304 is not a successful answer" in text
    assert "test_it.json" in text and "Error code: 500" not in text


def test_the_unused_summary_lists_twenty_and_counts_the_rest():
    from proxy.run import Result

    loaded = {f"k{n}": f"#{n} /v1/chat/completions gpt-test" for n in range(1, 26)}
    lines = Result("llm.json", "replay", loaded=loaded, played={"k1"}).text().splitlines()
    assert "24 unused recordings" in lines[0]
    assert lines[1:21] == [
        f"seedproxy: unused recording #{n} /v1/chat/completions gpt-test" for n in range(2, 22)
    ]
    assert lines[21:] == ["seedproxy: and 4 more unused recordings"]


VCR_CASSETTE = """interactions:
- request:
    body: '{"model": "gpt-test"}'
    headers: {}
    method: POST
    uri: https://api.example.com/v1/chat/completions?api-version=1&api_key=vcr-raw-token-1
  response:
    body: {string: '{}'}
    headers: {}
    status: {code: 200, message: OK}
version: 1
"""


def test_scan_finds_a_raw_query_credential_in_json_lines_and_vcrpy_cassettes(tmp_path: Path):
    lines = tmp_path / "llm.jsonl"
    lines.write_bytes(orjson.dumps(recorded("q", query="token=lines-raw-token-2")) + b"\n")
    vcr = tmp_path / "vcr.yaml"
    vcr.write_text(VCR_CASSETTE)
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(
        orjson.dumps(recorded("q", query="token=[REDACTED:query_credential:0123456789ab]")) + b"\n"
    )
    for path, where in ((lines, "line 1"), (vcr, "interaction 1")):
        scanned = seedproxy("scan", str(path), cwd=tmp_path)
        assert scanned.returncode == 1, scanned
        assert f"{path}: {where}: query_credential" in scanned.stdout
        assert "raw-token" not in scanned.stdout
    assert seedproxy("scan", str(clean), cwd=tmp_path).returncode == 0
