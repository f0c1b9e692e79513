"""Determinism tooling: the CLI over a live proxy's store, explain, verify sampling, probe."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import openai
import orjson
import pytest
from click.testing import CliRunner

from proxy import answers
from proxy.cli import colored_diff, main
from proxy.config import load_settings
from proxy.keys import KeyRules
from proxy.run import Result, Session
from tests.conftest import sdk
from tests.harness import FAKE_KEY, http

pytestmark = pytest.mark.every_store

MESSAGES = [{"role": "user", "content": "Say hello"}]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `seedproxy` command (what ``python -m proxy`` runs: ``proxy.cli.main``) on
    ``args`` in a SEEDPROXY_-free environment plus ``env``, its own store opened beside the
    proxy's as a user's would be; run in this process by click's runner, which spares a
    Python start-up (half a second of CPU) per call. A crash raises here, not exit 1."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SEEDPROXY_")}
    result = CliRunner().invoke(main, args, env=unset | (env or {}), catch_exceptions=False)
    return subprocess.CompletedProcess(
        ["seedproxy", *args], result.exit_code, result.stdout, result.stderr
    )


@pytest.fixture
def run(store_env):
    """`seedproxy ...` on this test's store (disk or Redis, selected by environment)."""

    def go(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return cli(*args, env={**store_env, **(env or {})})

    return go


@pytest.fixture
def run_json(run):
    def go(*args: str, env: dict[str, str] | None = None) -> object:
        result = run(*args, "--json", env=env)
        assert result.returncode == 0, result.stderr
        return orjson.loads(result.stdout)

    return go


@pytest.fixture
def busy(make_proxy, upstream):
    """A running proxy with hits, misses, a fingerprint change and a drift event."""
    proxy = make_proxy()
    with sdk(proxy) as client:
        for model in ("gpt-a", "gpt-b"):
            client.chat.completions.create(model=model, messages=MESSAGES)
            client.chat.completions.create(model=model, messages=MESSAGES)
        upstream.nondeterministic = True
        client.chat.completions.create(
            model="gpt-a", messages=MESSAGES, extra_headers={"Cache-Control": "no-cache"}
        )
        upstream.nondeterministic = False
        upstream.fingerprint = "fp_two"
        client.chat.completions.create(model="gpt-b", messages=[{"role": "user", "content": "new"}])
    http(proxy.url, "GET", "/_seedproxy/stats")  # flushes the counters to the store
    return proxy


def test_stats_while_the_proxy_runs(busy, run, run_json):
    stats = run_json("stats")
    assert (stats["hits"], stats["misses"], stats["refreshes"]) == (2, 3, 1)
    assert stats["stores"] == 4 and stats["entries"] == 3
    assert stats["drift_events"] == 1 and stats["fingerprint_changes"] == 1
    assert (
        stats["tokens_saved"] == stats["prompt_tokens_saved"] + stats["completion_tokens_saved"] > 0
    )
    assert stats["money_saved_usd"] is None
    human = run("stats")
    assert "hit ratio" in human.stdout and "40.0%" in human.stdout
    rows = human.stdout.splitlines()[2:]
    assert len(rows) == len(stats)  # every stat, not only in --json
    for row in ("refreshes  1", "bypasses  0", "replay misses  0", "upstream errors  0"):
        assert any(" ".join(r.split()) == row.replace("  ", " ") for r in rows), row
    assert "None" not in human.stdout


def test_stats_with_prices(busy, store_config, run_json, tmp_path):
    config = tmp_path / "prices.toml"
    cache = "".join(f'{k} = "{v}"\n' for k, v in store_config.items())
    config.write_text(f'[cache]\n{cache}[prices]\n"gpt-a" = [1000000, 0]\n')
    stats = run_json("stats", "--config", str(config))
    # gpt-a saved its prompt tokens once at $1 per token
    assert stats["money_saved_usd"] == pytest.approx(len(MESSAGES[0]["content"].split()))


def test_drift_listing_filters_and_show(busy, run, run_json):
    events = run_json("drift")
    assert [e["model"] for e in events] == ["gpt-a"]
    assert run_json("drift", "--model", "gpt-b") == []
    assert run_json("drift", "--since", "1h") == events
    assert run_json("drift", "--since", "2999-01-01") == []
    table = run("drift")
    assert events[0]["id"] in table.stdout and "refresh" in table.stdout
    shown = run("drift", "show", events[0]["id"])
    assert shown.returncode == 0
    assert "--- cached" in shown.stdout and "+++ live" in shown.stdout
    assert any(
        line.startswith("-") and not line.startswith("---") for line in shown.stdout.splitlines()
    )
    missing = run("drift", "show", "nope")
    assert missing.returncode == 2 and "no drift event" in missing.stderr


def test_human_output_says_no_seed_and_null_not_none(make_proxy, upstream, run):
    """A request sent without a seed to a model that gives no fingerprint."""
    proxy = make_proxy(seed={"mode": "passthrough"})
    upstream.fingerprint = None
    with sdk(proxy) as client:
        client.chat.completions.create(model="gpt-n", messages=MESSAGES)
        upstream.nondeterministic = True
        client.chat.completions.create(
            model="gpt-n", messages=MESSAGES, extra_headers={"Cache-Control": "no-cache"}
        )
    http(proxy.url, "GET", "/_seedproxy/stats")  # flushes the registry to the store
    table = run("drift").stdout
    row = table.splitlines()[2].split()
    assert row[-5:-1] == ["none", "null", "->", "null"], table
    event_id = row[0]
    shown = run("drift", "show", event_id).stdout
    assert f"drift {event_id}" in shown and "  no seed  " in shown
    assert "fingerprint null (cached) -> null (live)  same: yes" in shown
    fingerprints = run("fingerprints").stdout
    assert "gpt-n  null" in fingerprints
    purged = run("purge", "--all").stdout
    assert "gpt-n  null" in purged and purged.endswith("\n1 entry removed\n")
    _, _, page = http(proxy.url, "GET", "/_seedproxy/")
    for text in (table, shown, fingerprints, purged, page.decode()):
        assert "None" not in text and "True" not in text


def test_drift_diff_is_red_and_green_in_a_terminal():
    colored = colored_diff("--- cached\n+++ live\n@@ -1 +1 @@\n-old\n+new\n same")
    assert "\x1b[31m-old" in colored and "\x1b[32m+new" in colored


def test_fingerprints_per_model(busy, run, run_json):
    table = run_json("fingerprints")
    assert [s["fingerprint"] for s in table["gpt-b"]] == ["fp_two", "fp_one"]
    assert [s["count"] for s in table["gpt-a"]] == [2]
    only = run_json("fingerprints", "--model", "gpt-a")
    assert list(only) == ["gpt-a"]
    assert "first seen" in run("fingerprints").stdout


def test_export_import_replay_in_ci(busy, run, run_json, tmp_path, make_proxy, bg, upstream):
    def interactions(path):
        return orjson.loads(path.read_bytes())["interactions"]

    cassette = tmp_path / "cassette.json"
    same_upstream = {"SEEDPROXY_UPSTREAM_BASE_URL": busy.settings.upstream.base_url}
    result = run("export", str(cassette), env=same_upstream)
    assert result.returncode == 0, result.stderr
    exported = interactions(cassette)
    assert len(exported) == 3  # gpt-a (refreshed in place), gpt-b twice
    assert FAKE_KEY.encode() not in cassette.read_bytes()
    assert {i["model"] for i in exported} == {"gpt-a", "gpt-b"}
    assert not any("key" in i for i in exported)  # computed again on import
    elsewhere = tmp_path / "elsewhere.json"  # exported with another upstream configured:
    moved = run("export", str(elsewhere))  # shown by their requests, keyed where imported
    assert len(interactions(elsewhere)) == 3 and not any(
        "key" in i for i in interactions(elsewhere)
    )
    assert "3 entries were recorded under another upstream" in moved.stderr
    only_b = tmp_path / "b.json"
    run("export", str(only_b), "--model", "gpt-b", env=same_upstream)
    assert {i["model"] for i in interactions(only_b)} == {"gpt-b"}
    assert run("export", str(tmp_path / "none.json"), "--since", "2999-01-01").returncode == 0
    assert interactions(tmp_path / "none.json") == []

    ci = {"SEEDPROXY_CACHE_BACKEND": "disk", "SEEDPROXY_CACHE_DIR": str(tmp_path / "ci")}
    for added, there in ((3, 0), (0, 3)):  # idempotent
        imported = run("import", str(cassette), env=ci | same_upstream)
        assert imported.returncode == 0
        assert imported.stdout == (
            f"imported 3 entries from {cassette}: {added} added, {there} already there\n"
        )
    assert run_json("stats", env=ci)["entries"] == 3
    busy.stop()
    bg.run(upstream.stop())
    replay = make_proxy(cache={"mode": "replay", "backend": "disk", "dir": str(tmp_path / "ci")})
    with sdk(replay) as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-a", messages=MESSAGES)
    assert raw.headers["x-cache"] == "HIT"


def test_export_to_jsonl_writes_json_lines_and_import_reads_both(busy, run, tmp_path):
    same_upstream = {"SEEDPROXY_UPSTREAM_BASE_URL": busy.settings.upstream.base_url}
    document, lines = tmp_path / "llm.json", tmp_path / "llm.jsonl"
    for path in (document, lines):
        assert run("export", str(path), env=same_upstream).returncode == 0
    data = lines.read_bytes()
    records = [orjson.loads(line) for line in data.splitlines()]  # one object a line
    assert data.endswith(b"\n") and data.count(b"\n") == len(records) == 3
    assert records == orjson.loads(document.read_bytes())["interactions"]
    assert document.read_bytes().startswith(b'{\n  "version": 2,')  # the readable one
    written = lines.stat().st_mtime_ns
    assert run("export", str(lines), env=same_upstream).returncode == 0
    assert lines.stat().st_mtime_ns == written  # unchanged: not rewritten

    ci = same_upstream | {
        "SEEDPROXY_CACHE_BACKEND": "disk",
        "SEEDPROXY_CACHE_DIR": str(tmp_path / "ci"),
    }
    assert ": 3 added, 0 already there" in run("import", str(lines), env=ci).stdout
    assert ": 0 added, 3 already there" in run("import", str(document), env=ci).stdout
    edited = tmp_path / "edited.jsonl"  # a hand-edited line is named
    edited.write_bytes(data + b"\n" + b'{"recorded_at": "2026-01-31T12:00:00Z"}\n')
    result = run("import", str(edited), env=ci)
    assert result.returncode == 2 and "line 5: endpoint: missing" in result.stderr


def test_a_run_cassette_named_jsonl_is_json_lines(tmp_path, upstream, bg):
    settings = load_settings(None, {}, {"upstream.base_url": f"{upstream.url}/v1"})
    session, path = Session(settings, cassettes=True), tmp_path / "llm.jsonl"

    async def segment() -> Result:
        await session.begin(path, "once")
        async with openai.AsyncOpenAI(base_url=session.base_url, api_key="x") as client:
            for question in ("one", "two"):
                messages = [{"role": "user", "content": question}]
                await client.chat.completions.create(model="gpt-test", messages=messages)
        return await session.end()

    async def scenario() -> tuple[Result, Result]:
        await session.start()
        try:
            return await segment(), await segment()
        finally:
            await session.stop()

    recorded, replayed = bg.run(scenario())
    assert (recorded.recorded, replayed.hits, replayed.mode, replayed.written) == (
        2,
        2,
        "replay",
        False,
    )
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [i["request"]["messages"][0]["content"] for i in lines] == ["one", "two"]


def test_import_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "k"}\n')
    result = cli("import", str(bad), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2 and "line 1: not a cassette entry" in result.stderr


def test_purge_filters(busy, run, run_json):
    assert run("purge").returncode == 2
    out = run("purge", "--fingerprint", "fp_two", "--json")
    removed = orjson.loads(out.stdout)
    assert [(r["model"], r["fingerprint"]) for r in removed] == [("gpt-b", "fp_two")]
    assert run("purge", "--older-than", "1h").stdout.endswith("0 entries removed\n")
    text = run("purge", "--model", "gpt-a").stdout
    assert "gpt-a" in text and text.endswith("\n1 entry removed\n")
    assert run_json("stats")["entries"] == 1
    with sdk(busy) as client:  # read twice: the second time from the proxy's memory
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(model="gpt-b", messages=MESSAGES)
            assert raw.headers["x-cache"] == "HIT"
    run("purge", "--all")
    assert run_json("stats")["entries"] == 0
    with sdk(busy) as client:  # the running proxy sees the purge
        raw = client.chat.completions.with_raw_response.create(model="gpt-b", messages=MESSAGES)
    assert raw.headers["x-cache"] == "MISS"


# -- explain -------------------------------------------------------------------------------


def test_explain_endpoint_and_key_command_agree_with_the_proxy(client, proxy, tmp_path):
    body = {
        "model": "gpt-test",
        "messages": MESSAGES,
        "temperature": 1.0,
        "user": "u",
        "stream": False,
    }
    raw = client.chat.completions.with_raw_response.create(**body)
    status, _, answer = http(proxy.url, "POST", "/_seedproxy/explain", body=orjson.dumps(body))
    info = orjson.loads(answer)
    assert status == 200
    assert info["key"] == raw.headers["x-seedproxy-key"]
    assert info["ignored_fields"] == ["stream", "user"]
    assert info["seed"] == 12345 and info["namespace"] == ""
    assert orjson.loads(info["canonical"]) == {
        "messages": MESSAGES,
        "model": "gpt-test",
        "seed": 12345,
        "temperature": 1,
    }
    _, _, spaced = http(
        proxy.url,
        "POST",
        "/_seedproxy/explain",
        body=orjson.dumps(body),
        headers={"X-Seedproxy-Namespace": "team-a"},
    )
    assert orjson.loads(spaced)["key"] != info["key"]
    status, _, err = http(proxy.url, "POST", "/_seedproxy/explain?path=/v1/nope", body=b"{}")
    assert status == 400 and "not a cached endpoint" in orjson.loads(err)["error"]["message"]

    request_file = tmp_path / "request.json"
    request_file.write_bytes(orjson.dumps(body))
    offline = cli(
        "key",
        str(request_file),
        "--json",
        env={"SEEDPROXY_UPSTREAM_BASE_URL": proxy.settings.upstream.base_url},
    )
    assert orjson.loads(offline.stdout)["key"] == info["key"]


def test_replay_miss_names_the_nearest_recording_and_the_fields_that_differ(
    make_proxy, upstream, monkeypatch
):
    compared = []  # the replay misses compared with recordings, in a thread
    closest = answers._closest
    monkeypatch.setattr(answers, "_closest", lambda *a: compared.append(a) or closest(*a))
    recorder = make_proxy()
    with sdk(recorder) as client:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES, temperature=0.5)
        client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "something else entirely"}],
            max_tokens=9,
        )
    recorder.stop()
    replay = make_proxy(cache={"mode": "replay"})
    import openai

    with sdk(replay) as client:
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(
                model="gpt-test",
                temperature=0.7,
                messages=[{"role": "user", "content": "Say hello!"}],
            )
        assert (
            'differs in: messages[0].content (recorded "Say hello", sent "Say hello!"); '
            "temperature (recorded 0.5, sent 0.7)"
        ) in err.value.message
        assert len(compared) == 1
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="other-model", messages=MESSAGES)
        assert "Nothing is recorded for model 'other-model'" in err.value.message
        assert len(compared) == 1  # nothing to compare with: no thread, no walk of the body
    # nor is a body shaped (redacted: a walk as long as the body) to be compared with nothing
    monkeypatch.setattr(KeyRules, "shape", lambda *a, **k: pytest.fail("shaped"))
    assert replay.settings.keyer.nearest({"model": "m", "messages": MESSAGES}, []) is None


# -- verify sampling ----------------------------------------------------------------------


def wait_for(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        threading.Event().wait(0.02)


@pytest.mark.parametrize("replace", [False, True])
def test_verify_sampling_compares_in_the_background(make_proxy, upstream, replace):
    proxy = make_proxy(cache={"verify_rate": 1.0, "verify_replace": replace})
    with sdk(proxy) as client:
        stored = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        upstream.nondeterministic = True
        upstream.gate = threading.Event()  # the verify request hangs until released
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        # the hit was answered while its live re-request was still held at the upstream
        assert raw.headers["x-cache"] == "HIT" and not upstream.gate.is_set()
        assert raw.parse().choices[0].message.content == stored.choices[0].message.content
        upstream.gate.set()
        wait_for(lambda: proxy.counters["drift_events"] == 1)

        def events() -> list[dict]:
            return orjson.loads(http(proxy.url, "GET", "/_seedproxy/drift")[2])["drift"]

        wait_for(lambda: events() != [])  # counted before it is stored (in the pool)
        assert [e["reason"] for e in events()] == ["verify"]
        upstream.gate = None
        upstream.nondeterministic = False
        again = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert len(upstream.chat_calls) >= 2
    replaced = again.choices[0].message.content != stored.choices[0].message.content
    assert replaced is replace


def test_verify_concurrency_is_bounded(make_proxy, upstream):
    proxy = make_proxy(cache={"verify_rate": 1.0, "verify_concurrency": 1})
    with sdk(proxy) as client:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        upstream.gate = threading.Event()
        for _ in range(3):
            client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert proxy.counters["verify_skipped"] == 2
        upstream.gate.set()
        wait_for(lambda: proxy.counters["verifications"] == 1)


# -- probe --------------------------------------------------------------------------------


def probe(upstream, *args: str):
    return CliRunner().invoke(
        main,
        ["probe", "--model", "gpt-test", "--base-url", f"{upstream.url}/v1", *args],
        env={"OPENAI_API_KEY": "none"},
    )


def test_probe_identical_outputs_pass_the_gate(upstream):
    result = probe(upstream, "--runs", "3", "--expect-identical")
    assert result.exit_code == 0, result.output
    assert "identical-output rate 100%" in result.output
    assert [c.json()["seed"] for c in upstream.chat_calls] == [12345] * 3
    assert all(c.headers["Cache-Control"] == "no-store" for c in upstream.chat_calls)


def test_probe_reports_differences_and_fails_the_gate(upstream, tmp_path):
    upstream.nondeterministic = True
    report = tmp_path / "probe.html"
    result = probe(
        upstream,
        "--runs",
        "3",
        "--no-seed",
        "--temperature",
        "1.2",
        "--system",
        "Be brief.",
        "--json",
        "--html",
        str(report),
        "--expect-identical",
    )
    assert result.exit_code == 1
    data = orjson.loads(result.stdout)
    assert data["summary"]["identical_rate"] == 0.0 and data["summary"]["distinct_outputs"] == 3
    assert data["summary"]["distinct_fingerprints"] == ["fp_one"]
    assert 0 < data["summary"]["mean_similarity"] < 1
    assert [r["number"] for r in data["runs"]] == [1, 2, 3]
    sent = upstream.chat_calls[0].json()
    assert "seed" not in sent and sent["temperature"] == 1.2
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    html = report.read_text()
    assert html.count('<table class="diff"') == 2
    assert "diff_sub" in html or "diff_chg" in html
    assert "<script" not in html and "http" not in html.split("<style>")[1].split("</style>")[0]
    assert ">no seed<" in html and ">1.2<" in html and ">default<" in html  # max_tokens
    assert "None" not in html
    assert "None" not in html


def test_probe_of_a_model_without_fingerprint_says_null(upstream):
    upstream.fingerprint = None
    result = probe(upstream, "--runs", "2")
    assert result.exit_code == 0, result.output
    assert "fingerprints null" in result.output and "None" not in result.output
