"""The load experiment: `seedproxy probe --runs N --concurrency C1,C2,...`."""

from __future__ import annotations

import threading
from html import escape

import orjson
from click.testing import CliRunner

from proxy import experiment as ex
from proxy.cli import main
from tests.harness import chat_completion, http
from tests.test_tools import wait_for
from tests.upstream import Scripted


def answers(*texts: str, tokens: bool = False, fingerprint: str | None = "fp") -> list[ex.Answer]:
    return [ex.Answer(t, fingerprint, tuple(t.split(" ")) if tokens else None) for t in texts]


# -- the statistics (pure) ----------------------------------------------------------------


def test_a_level_is_measured_against_its_most_common_answer():
    level = ex.level(
        4,
        answers("a b c", "a b c", "a b x", "a b c", "z", "a b xy", tokens=True),
        logprobs=True,
    )
    data = level.to_json()
    assert (data["runs"], data["unique"], data["mode_count"]) == (6, 4, 3)
    assert data["identical_rate"] == 0.5
    assert (data["wilson_low"], data["wilson_high"]) == (0.1876, 0.8124)
    # "a b x" and "a b xy" differ at character 5 (word 3, token 3); "z" at the first
    assert data["divergence_chars"] == {"min": 1, "median": 5, "p90": 5}
    assert data["divergence_words"] == {"min": 1, "median": 3, "p90": 3}
    assert data["divergence_tokens"] == {"min": 1, "median": 3, "p90": 3}
    assert data["fingerprints"] == ["fp"]
    assert level.others == ["a b x", "z", "a b xy"]
    assert ex.most_different(level) == "z"


def test_identical_answers_have_no_divergence_and_tokens_only_when_asked():
    data = ex.level(1, answers("same", "same"), logprobs=False).to_json()
    assert data["divergence_chars"] is None and data["divergence_words"] is None
    assert "divergence_tokens" not in data
    assert data["identical_rate"] == 1.0 and data["wilson_high"] == 1.0
    # asked for, but the answers carried none
    data = ex.level(1, answers("a", "b"), logprobs=True).to_json()
    assert data["divergence_tokens"] is None and data["divergence_chars"]["min"] == 1


def test_fingerprints_are_listed_once_each_null_first():
    found = [ex.Answer("t", fp, None) for fp in ("b", None, "a", "b")]
    assert ex.level(2, found, logprobs=False).fingerprints == [None, "a", "b"]


def test_spread_and_token_divergence():
    assert ex.spread([]) is None
    assert ex.spread([7]) == {"min": 7, "median": 7, "p90": 7}
    assert ex.spread(list(range(1, 11))) == {"min": 1, "median": 5.5, "p90": 9}
    assert ex.spread(list(range(100, 0, -1)))["p90"] == 90
    assert ex.token_divergence(["a", "b"], ["a", "c"]) == 2
    assert ex.token_divergence(["a"], ["a", "b"]) == 2
    assert ex.token_divergence(["x"], ["y"]) == 1


def test_load_dependence_is_decided_by_the_extreme_levels_intervals():
    alone = ex.level(1, answers(*["same"] * 20), logprobs=False)
    crowded = ex.level(8, answers(*["same"] * 8, *[f"other {i}" for i in range(12)]), False)
    middle = ex.level(4, answers(*[f"x{i}" for i in range(20)]), False)  # ignored
    assert ex.load_dependent([alone, middle, crowded])
    assert ex.verdict([alone, middle, crowded]) == (
        "load-dependent: identical rate 100.0% at concurrency 1, 40.0% at concurrency 8 "
        "(95% intervals do not overlap)"
    )
    close = ex.level(8, answers(*["same"] * 18, "a", "b"), False)
    assert not ex.load_dependent([alone, close])
    assert ex.verdict([alone, close]).startswith("no load dependence measured: identical rate")
    assert ex.verdict([alone]) == (
        "no load dependence measured: one level only (identical rate 100.0% at concurrency 1)"
    )


def test_rounds_give_every_level_its_runs_in_waves_of_the_highest_concurrency():
    assert ex.round_sizes(16, 4) == [4, 4, 4, 4]
    assert ex.round_sizes(10, 4) == [4, 4, 2]
    assert ex.round_sizes(5, 1) == [1] * 5
    assert sum(ex.round_sizes(1000, 7)) == 1000


def test_histogram_bins():
    assert ex.histogram([1, 2, 10, 10], 10, bins=5) == [
        (1, 2, 2),
        (3, 4, 0),
        (5, 6, 0),
        (7, 8, 0),
        (9, 10, 2),
    ]
    assert ex.histogram([3], 3) == [(1, 1, 0), (2, 2, 0), (3, 3, 1)]


def test_answer_reads_text_fingerprint_and_logprobs_tokens():
    completion = chat_completion("hello world", fingerprint=None)
    assert ex.answer(completion) == ex.Answer("hello world", None, None)
    completion["choices"][0]["logprobs"] = {"content": [{"token": "hello"}, {"token": " world"}]}
    assert ex.answer(completion).tokens == ("hello", " world")


# -- against the fake upstream ------------------------------------------------------------


def probe(base_url: str, *args: str):
    return CliRunner().invoke(
        main,
        ["probe", "--model", "gpt-test", "--base-url", base_url, *args],
        env={"OPENAI_API_KEY": "none"},
    )


def test_a_load_dependent_upstream_is_found_load_dependent(upstream):
    """Answers change only when requests overlap: concurrency 1 is deterministic, 4 is not."""
    upstream.load_dependent = True
    result = probe(
        f"{upstream.url}/v1", "--runs", "16", "--concurrency", "4,1", "--logprobs", "--json"
    )
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout)
    assert data["load_dependent"] is True
    alone, crowded = data["levels"]
    assert (alone["concurrency"], crowded["concurrency"]) == (1, 4)
    assert alone["runs"] == crowded["runs"] == 16
    assert alone["unique"] == 1 and alone["identical_rate"] == 1.0
    assert alone["divergence_chars"] is None and alone["divergence_tokens"] is None
    assert crowded["unique"] > 1 and crowded["wilson_high"] < alone["wilson_low"]
    assert crowded["divergence_chars"]["min"] >= 1 and crowded["divergence_words"] is not None
    # the fake's tokens are its words, so both count the same positions
    assert crowded["divergence_tokens"] == crowded["divergence_words"]
    assert set(crowded) == {
        "concurrency",
        "runs",
        "unique",
        "mode_count",
        "identical_rate",
        "wilson_low",
        "wilson_high",
        "fingerprints",
        "divergence_chars",
        "divergence_words",
        "divergence_tokens",
    }
    assert crowded["fingerprints"] == ["fp_one"]
    assert upstream.call_count == 32 and 2 <= upstream.max_in_flight <= 4
    sent = upstream.chat_calls[0]
    assert sent.json()["logprobs"] is True and sent.json()["seed"] == 12345
    assert sent.headers["Cache-Control"] == "no-store"


def test_a_deterministic_upstream_is_not_load_dependent(upstream):
    result = probe(
        f"{upstream.url}/v1", "--runs", "8", "--concurrency", "1,2,4", "--expect-identical"
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["concurrency", "runs", "unique"]
    assert [line.split()[:4] for line in lines[2:5]] == [
        ["1", "8", "1", "8"],
        ["2", "8", "1", "8"],
        ["4", "8", "1", "8"],
    ]
    assert lines[-1] == (
        "no load dependence measured: identical rate 100.0% at concurrency 1, "
        "100.0% at concurrency 4 (95% intervals overlap)"
    )
    assert upstream.call_count == 24
    data = orjson.loads(
        probe(f"{upstream.url}/v1", "--runs", "4", "--concurrency", "2", "--json").stdout
    )
    assert data["load_dependent"] is False and "divergence_tokens" not in data["levels"][0]


def test_the_text_report_reads_load_dependence(upstream, tmp_path):
    upstream.load_dependent = True
    result = probe(
        f"{upstream.url}/v1",
        *("--runs", "12", "--concurrency", "1,4", "--no-seed", "--expect-identical"),
        *("--cache-dir", str(tmp_path)),
    )
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[-1].startswith(
        "load-dependent: identical rate 100.0% at concurrency 1, "
    )
    assert "outputs differ (--expect-identical)" in result.stderr
    assert all("seed" not in c.json() for c in upstream.chat_calls)
    # each run compared with the first, counted as a probe's beside real traffic
    counted = CliRunner().invoke(main, ["determinism", "--json", "--cache-dir", str(tmp_path)])
    (row,) = orjson.loads(counted.stdout)["models"]
    assert (row["source"], row["compared"]) == ("probe", 23)
    assert 11 <= row["identical"] < 23  # the other 11 runs alone, not all 12 crowded ones


def test_answers_count_as_runs_compared_with_the_first():
    runs = ex.as_runs(answers("a b", "a b", "a c"))
    assert [(r.number, r.identical) for r in runs] == [(1, True), (2, True), (3, False)]
    assert runs[1].similarity == 1.0 and 0 < runs[2].similarity < 1


def test_bad_levels_are_refused_before_any_call(upstream):
    for levels, message in [
        ("0,2", "each level from 1 to 256"),
        ("1,x", "comma-separated list of integers"),
        ("1,8", "8 in flight at once needs --runs 8 or more"),
    ]:
        result = probe(f"{upstream.url}/v1", "--runs", "4", "--concurrency", levels)
        assert result.exit_code == 2 and message in result.output, result.output
    assert upstream.call_count == 0


def test_a_proxy_changing_the_seed_stops_the_experiment(upstream):
    answer = upstream.completion({"messages": []})
    upstream.script(*[Scripted(status=200, body=answer, headers={"X-Seedproxy-Seed": "1"})] * 2)
    result = probe(f"{upstream.url}/v1", "--runs", "2", "--concurrency", "2", "--seed", "7")
    assert result.exit_code == 2 and "the probe chose 7" in result.output


def test_the_html_page_escapes_what_the_model_said(upstream, tmp_path):
    hostile = "<script>alert(1)</script>"
    model = "<img src=x onerror=alert(2)>"
    common = chat_completion(f"fine {hostile}\nsecond line", model=model, fingerprint="<b>fp</b>")
    other = chat_completion(f"fine </pre>{hostile}", model=model, fingerprint="<b>fp</b>")
    upstream.script(
        *[Scripted(status=200, body=common) for _ in range(3)],
        Scripted(status=200, body=other),
        *[Scripted(status=200, body=common) for _ in range(4)],
    )
    page = tmp_path / "probe.html"
    result = CliRunner().invoke(
        main,
        [
            "probe",
            "--model",
            model,
            "--prompt",
            hostile,
            "--base-url",
            f"{upstream.url}/v1",
            "--runs",
            "4",
            "--concurrency",
            "1,2",
            "--html",
            str(page),
        ],
        env={"OPENAI_API_KEY": "none"},
    )
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "<script" not in html and "<img" not in html and "<b>fp" not in html
    assert "</pre><script" not in html
    assert escape(model) in html and escape("<b>fp</b>") in html
    assert html.count('<table class="diff"') == 1  # the level that had a different answer
    assert "class=bar" in html and "most common (3 of 4)" in html
    assert "All 4 answers were identical" in html
    assert html.count("<h2>Concurrency ") == 2


# -- through a proxy: every run reaches the upstream, C at once ---------------------------


def test_through_a_proxy_every_run_reaches_the_upstream_c_at_once(proxy, upstream):
    upstream.gate = threading.Event()  # the upstream holds every answer until released
    outcome: list = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            probe(proxy.base_url, "--runs", "8", "--concurrency", "4", "--json")
        )
    )
    worker.start()
    try:
        # four identical requests, none answered: were they coalesced, one would be here
        wait_for(lambda: upstream.in_flight == 4)
    finally:
        upstream.gate.set()
        worker.join()
    assert outcome[0].exit_code == 0, outcome[0].output
    upstream.gate = None
    result = probe(proxy.base_url, "--runs", "8", "--concurrency", "1,4", "--json")
    assert result.exit_code == 0, result.output
    assert upstream.call_count == 24 and upstream.max_in_flight == 4
    assert {c.json()["seed"] for c in upstream.chat_calls} == {12345}
    assert orjson.loads(result.stdout)["load_dependent"] is False
    stats = orjson.loads(http(proxy.url, "GET", "/_seedproxy/stats")[2])
    assert stats["bypasses"] == 24
    assert stats["stores"] == stats["hits"] == stats["coalesced"] == 0
