"""Determinism counts: the pure part (names, tallies, Wilson interval, seed-mode header)."""

from __future__ import annotations

import itertools
import subprocess
from html import escape

import openai
import orjson
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from proxy import determinism as d
from proxy.cli import main
from proxy.errors import ProxyError
from proxy.observe import MODEL_LABELS, OTHER, DivergenceMetric, ModelLabels
from proxy.policy import Sighting, seed_mode
from tests.conftest import sdk
from tests.harness import ProxyServer, http
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS
from tests.test_tools import cli, wait_for
from tests.upstream import Scripted

pytestmark = pytest.mark.every_store

CHAT = "/v1/chat/completions"
HOSTILE = ['a|b"c', "<script>", "ünï\u2028", '[1,"x"]', "null", "", "\\"]


def merged(*parts: dict[str, int]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for name, n in part.items():
            total[name] = total.get(name, 0) + n
    return total


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("stored", [None, "fp_a"])
def test_names_round_trip_any_model_and_fingerprint(text, stored):
    names = d.counts(7300.5, CHAT, text, stored, text, 0.25, source="probe")
    assert all(name.isascii() for name in names)
    cells = {d.parse_name(name) for name in names}
    cell = d.Cell(7200, "probe", CHAT, text, stored, text)
    assert cells == {(cell, "differed"), (cell, "similarity")}
    assert names[d.counter_name(cell, "similarity")] == 250_000


@pytest.mark.parametrize(
    "name",
    ["hits", "saved_prompt:gpt", "cmp:", "cmp:[1,2]", 'cmp:[0,"x","e","m",null,null,"identical"]'],
)
def test_other_counters_are_not_comparisons(name):
    assert d.parse_name(name) is None
    assert d.tallies({name: 3}) == {}


def test_null_and_the_string_null_are_different_fingerprints():
    counters = merged(
        d.counts(0, CHAT, "m", None, None, None), d.counts(0, CHAT, "m", "null", "null", 0.5)
    )
    tallies = d.tallies(counters)
    assert tallies[("traffic", "m", None, None)].identical == 1
    assert tallies[("traffic", "m", "null", "null")].compared == 1


def test_wilson_interval():
    assert d.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    low, high = d.wilson(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high == pytest.approx(1.0)
    low, high = d.wilson(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    with pytest.raises(ValueError):
        d.wilson(0, 0)


def test_report_separates_fingerprints_changes_and_probes():
    hour = 3600 * 100
    counters = merged(
        *[d.counts(hour + i, CHAT, "gpt", "fp1", "fp1", None) for i in range(8)],
        d.counts(hour, CHAT, "gpt", "fp1", "fp1", 0.5),
        d.counts(hour, CHAT, "gpt", "fp1", "fp1", 0.7),
        d.counts(hour, "/v1/completions", "gpt", "fp2", "fp2", None),
        d.counts(hour, CHAT, "gpt", "fp1", "fp2", 0.1),
        d.counts(hour, CHAT, "gpt", "fp1", "fp1", 0.2, source="probe"),
        d.counts(hour, CHAT, "other", None, None, None),
    )
    sightings = {"gpt": {"fp1": Sighting("fp1", 10.0, 20.0, 3)}}
    rows = d.report(d.tallies(counters), sightings)
    assert [(r["model"], r["source"]) for r in rows] == [
        ("gpt", "traffic"),
        ("gpt", "probe"),
        ("other", "traffic"),
    ]
    gpt = rows[0]
    assert (gpt["compared"], gpt["identical"], gpt["differed"]) == (11, 9, 2)
    assert gpt["rate"] == round(9 / 11, 4) and gpt["mean_similarity"] == 0.6
    assert gpt["wilson_low"] < gpt["rate"] < gpt["wilson_high"]
    assert gpt["cross_fingerprint"] == {
        "compared": 1,
        "identical": 0,
        "differed": 1,
        "rate": 0.0,
        "wilson_low": 0.0,
        "wilson_high": pytest.approx(0.7935, abs=1e-4),
        "mean_similarity": 0.1,
        "median_divergence_chars": None,
    }
    assert gpt["changes"] == [{"from": "fp1", "to": "fp2", **gpt["cross_fingerprint"]}]
    fp1, fp2 = gpt["fingerprints"]
    assert (fp1["fingerprint"], fp1["compared"], fp1["first_seen"], fp1["last_seen"]) == (
        "fp1",
        10,
        10.0,
        20.0,
    )
    assert (fp2["fingerprint"], fp2["rate"], fp2["first_seen"]) == ("fp2", 1.0, None)
    assert rows[1]["compared"] == 1 and rows[1]["rate"] == 0.0
    assert rows[2]["fingerprints"][0]["fingerprint"] is None
    empty = rows[2]["cross_fingerprint"]
    assert empty["compared"] == 0 and empty["rate"] is None and empty["wilson_low"] is None


def test_position_buckets_are_exact_then_at_most_9_percent_wide():
    assert [d.position_bucket(n) for n in range(1, 34)] == list(range(1, 34))
    starts = sorted({d.position_bucket(n) for n in range(1, 1_000_000)})
    assert len(starts) < 200  # a cell holds a few hundred counters at most
    for low, high in itertools.pairwise(starts):
        assert d.position_bucket(low) == low and d.position_bucket(high - 1) == low
        assert (high - low) / low <= 2 ** (1 / 8) - 1 + 1 / low
    assert d.position_bucket(10**12) <= 10**12


def test_median_divergence_per_model_and_fingerprint():
    hour = 3600 * 7

    def differed(fp_live, at):
        return d.counts(hour, CHAT, "gpt", "fp1", fp_live, 0.5, divergence_chars=at)

    counters = merged(
        differed("fp1", 3),
        differed("fp1", 3),
        differed("fp1", 17),
        differed("fp1", 40_000),
        differed("fp1", 5),
        differed("fp2", 1000),
        d.counts(hour, CHAT, "gpt", "fp1", "fp1", None),  # identical: no position
        d.counts(hour, CHAT, "gpt", "fp1", "fp1", 0.1),  # a difference outside the text
    )
    (row,) = d.report(d.tallies(counters), {})
    assert row["median_divergence_chars"] == 5  # of 3, 3, 5, 17, 40000
    assert row["fingerprints"][0]["median_divergence_chars"] == 5
    change = row["changes"][0]
    assert change["median_divergence_chars"] == d.position_bucket(1000)
    assert 0.91 * 1000 <= change["median_divergence_chars"] <= 1000
    # position counters are neither comparisons nor metric samples
    assert row["compared"] == 7 and row["differed"] == 6
    assert sum(d.metric_samples(counters).values()) == 8


@pytest.mark.parametrize("measure", ["diverged_at:0", "diverged_at:34", "diverged_at:x", "at:5"])
def test_bad_position_counters_are_ignored(measure):
    name = d.counter_name(d.Cell(0, "traffic", CHAT, "m", None, None), measure)
    assert d.parse_name(name) is None


def test_since_and_model_filters_work_by_the_hour():
    counters = merged(
        d.counts(3600 * 10 + 5, CHAT, "a", "f", "f", None),
        d.counts(3600 * 12 + 5, CHAT, "a", "f", "f", 0.5),
        d.counts(3600 * 12 + 5, CHAT, "b", "f", "f", None),
    )
    assert d.tallies(counters, since=3600 * 11)[("traffic", "a", "f", "f")].compared == 1
    # the hour that holds `since` is in
    assert d.tallies(counters, since=3600 * 10 + 3599)[("traffic", "a", "f", "f")].compared == 2
    assert d.tallies(counters, since=3600 * 13) == {}
    assert set(d.tallies(counters, model="b")) == {("traffic", "b", "f", "f")}


def test_failing_gates_traffic_only_with_enough_comparisons():
    rows = [
        {"model": "low", "source": "traffic", "compared": 10, "identical": 8},
        {"model": "few", "source": "traffic", "compared": 2, "identical": 0},
        {"model": "ok", "source": "traffic", "compared": 10, "identical": 10},
        {"model": "probe", "source": "probe", "compared": 10, "identical": 0},
        {"model": "none", "source": "traffic", "compared": 0, "identical": 0},
    ]
    assert d.failing(rows, 0.9, 3) == ["low"]
    assert d.failing(rows, 0.9, 1) == ["low", "few"]
    assert d.failing(rows, 0.8, 1) == ["few"]


def test_metric_samples_keep_changes_apart_and_leave_probes_out():
    counters = merged(
        d.counts(0, CHAT, "m", "f1", "f1", None),
        d.counts(0, "/v1/completions", "m", "f1", "f1", None),
        d.counts(0, CHAT, "m", "f1", "f1", 0.3),
        d.counts(0, CHAT, "m", None, "f2", 0.3),
        d.counts(0, CHAT, "m", "f1", "f1", 0.3, source="probe"),
        {"hits": 4},
    )
    assert d.metric_samples(counters) == {
        ("m", "f1", "identical"): 2,
        ("m", "f1", "differed"): 1,
        ("m", "null->f2", "differed"): 1,
    }


def test_seed_mode_header():
    assert seed_mode(None, "force", True) == "force"
    assert seed_mode(" Passthrough ", "force", True) == "passthrough"
    assert seed_mode("require", "passthrough", True) == "require"
    with pytest.raises(ProxyError) as err:
        seed_mode("<none>", "force", True)
    assert err.value.status == 400 and err.value.code == "invalid_seed_mode"
    assert "passthrough" in err.value.message
    assert seed_mode(None, "require", False) == "require"  # no header: the operator's
    for header in ("passthrough", "require", "<none>"):  # not allowed: refused, even if valid
        with pytest.raises(ProxyError) as err:
            seed_mode(header, "require", False)
        assert err.value.status == 403 and err.value.code == "seed_mode_not_allowed"
        assert "seed.allow_client_mode" in err.value.message


# -- end to end: the proxy counts, the CLI reports, /metrics and the dashboard show ---------

MESSAGES = [{"role": "user", "content": "Count the waves"}]
NO_CACHE = {"Cache-Control": "no-cache"}


def refresh(client: openai.OpenAI, model: str = "gpt-d") -> None:
    client.chat.completions.create(model=model, messages=MESSAGES, extra_headers=NO_CACHE)


def flush(*proxies: ProxyServer) -> None:
    for proxy in proxies:
        http(proxy.url, "GET", "/_seedproxy/stats")  # writes the counters to the store


@pytest.fixture
def run(store_env):
    """`seedproxy ...` in its own process on this test's store (disk or Redis)."""

    def go(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, env=store_env)

    return go


@pytest.fixture
def compared(make_proxy, upstream):
    """Two proxies on one store (two replicas): four same-fingerprint comparisons under
    fp_one (one differed), one across the change to fp_two, one identical under fp_two."""
    one, two = make_proxy(), make_proxy()
    with sdk(one) as a, sdk(two) as b:
        a.chat.completions.create(model="gpt-d", messages=MESSAGES)
        for client in (a, b, a):
            refresh(client)
        upstream.nondeterministic = True
        refresh(b)
        upstream.nondeterministic = False
        upstream.fingerprint = "fp_two"
        refresh(a)
        refresh(a)
    flush(one, two)
    return one, two


def test_every_comparison_counts_across_replicas(compared, run):
    result = run("determinism", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = orjson.loads(result.stdout)["models"]
    assert (row["model"], row["source"]) == ("gpt-d", "traffic")
    assert (row["compared"], row["identical"], row["rate"]) == (5, 4, 0.8)
    assert row["wilson_low"] < 0.8 < row["wilson_high"] and 0 < row["mean_similarity"] < 1
    cross = row["cross_fingerprint"]
    assert (cross["compared"], cross["identical"]) == (1, 0)
    assert [(c["from"], c["to"], c["compared"]) for c in row["changes"]] == [
        ("fp_one", "fp_two", 1)
    ]
    fp_one, fp_two = row["fingerprints"]
    assert (fp_one["fingerprint"], fp_one["compared"], fp_one["identical"]) == ("fp_one", 4, 3)
    assert (fp_two["fingerprint"], fp_two["compared"], fp_two["identical"]) == ("fp_two", 1, 1)
    assert fp_one["first_seen"] <= fp_one["last_seen"] <= fp_two["first_seen"]

    human = run("determinism").stdout
    assert "gpt-d" in human and "80.0%" in human and "fp_one -> fp_two" in human
    assert "None" not in human
    assert orjson.loads(run("determinism", "--json", "--model", "other").stdout)["models"] == []
    later = run("determinism", "--json", "--since", "2999-01-01")
    assert orjson.loads(later.stdout)["models"] == []
    assert len(orjson.loads(run("determinism", "--json", "--since", "1h").stdout)["models"]) == 1


def test_comparison_counters_are_not_ordinary_stats(compared, run):
    stats = orjson.loads(run("stats", "--json").stdout)
    assert stats["refreshes"] == 6 and not [k for k in stats if "cmp" in k]
    assert "cmp" not in run("stats").stdout
    for proxy in compared:
        assert b"cmp" not in http(proxy.url, "GET", "/_seedproxy/stats")[2]


def test_fail_under_gates_ci(compared, run):
    below = run("determinism", "--fail-under", "0.9")
    assert below.returncode == 1
    assert "gpt-d: same-fingerprint identical rate 80.0% (4/5) is below 90.0%" in below.stderr
    assert run("determinism", "--fail-under", "0.8").returncode == 0
    few = run("determinism", "--fail-under", "0.9", "--min-compared", "6")
    assert few.returncode == 0 and "nothing to gate" in few.stderr
    assert run("determinism", "--fail-under", "1.5").returncode == 2


def test_metrics_count_comparisons_by_model_fingerprint_and_result(compared):
    one = compared[0]
    samples = {}
    for family in text_string_to_metric_families(http(one.url, "GET", "/metrics")[2].decode()):
        for s in family.samples:
            if s.name == "seedproxy_comparisons_total":
                samples[s.labels["model"], s.labels["fingerprint"], s.labels["result"]] = s.value
    # this replica's own comparisons: refreshes 1 and 3, the change, the last one
    assert samples == {
        ("gpt-d", "fp_one", "identical"): 2,
        ("gpt-d", "fp_one->fp_two", "differed"): 1,
        ("gpt-d", "fp_two", "identical"): 1,
    }


def test_a_verify_sample_is_counted(make_proxy, upstream, run):
    proxy = make_proxy(cache={"verify_rate": 1.0})
    with sdk(proxy) as client:
        for _ in range(2):
            client.chat.completions.create(model="gpt-v", messages=MESSAGES)
    wait_for(lambda: proxy.counters["verifications"] == 1)
    flush(proxy)
    (row,) = orjson.loads(run("determinism", "--json").stdout)["models"]
    assert (row["model"], row["compared"], row["identical"]) == ("gpt-v", 1, 1)


HOSTILE_MODEL = "<img src=x onerror=alert(1)>"
HOSTILE_FP = '"><script>alert(2)</script>'


def test_html_report_and_dashboard_escape_hostile_names(make_proxy, upstream, run, tmp_path):
    proxy = make_proxy()
    upstream.fingerprint = HOSTILE_FP
    with sdk(proxy) as client:
        client.chat.completions.create(model=HOSTILE_MODEL, messages=MESSAGES)
        refresh(client, HOSTILE_MODEL)
        upstream.nondeterministic = True
        refresh(client, HOSTILE_MODEL)
    flush(proxy)
    report = tmp_path / "determinism.html"
    result = run("determinism", "--html", str(report))
    assert result.returncode == 0, result.stderr
    html = report.read_text()
    assert "<svg" in html and html.count('<table class="diff"') == 1
    assert html.count(escape(HOSTILE_MODEL)) == 2  # the model's rates, its drift event
    assert "<img src=x" not in html and "<script>alert" not in html
    assert "<script" not in html and "http" not in html.split("<style>")[1].split("</style>")[0]

    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is missing: the test command installs Debian's chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            for url in (report.as_uri(), f"{proxy.url}/_seedproxy/"):
                page.goto(url)
                section = page.locator(".determinism")
                assert section.count() == 1
                assert section.locator("h3").inner_text() == HOSTILE_MODEL
                assert section.locator("svg text").first.text_content() == HOSTILE_FP
                assert "50.0%" in section.inner_text()  # one identical, one differed
            assert dialogs == [] and page.locator("img").count() == 0
        finally:
            browser.close()


def test_dashboard_shows_timeline_and_rates_per_fingerprint(compared):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is missing: the test command installs Debian's chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{compared[0].url}/_seedproxy/")
            assert "Determinism per model" in page.inner_text("body")
            section = page.locator(".determinism")
            assert section.locator("h3").inner_text() == "gpt-d"
            bars = section.locator("svg rect")
            assert bars.count() == 2  # fp_one and fp_two, each a bar on the timeline
            assert bars.first.bounding_box()["width"] > 0
            rows = section.locator("tbody tr")
            cells = [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())]
            assert [c[:5] for c in cells] == [
                ["fp_one", "traffic", "4", "3", "75.0%"],
                ["fp_two", "traffic", "1", "1", "100.0%"],
                ["fp_one -> fp_two", "traffic", "1", "0", "0.0%"],
            ]
        finally:
            browser.close()


# -- the seed-mode header and the probe through a proxy -----------------------------------


def test_seed_mode_header_picks_the_policy_of_one_request(proxy, client, upstream):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test",
        messages=MESSAGES,
        extra_headers={"X-Seedproxy-Seed-Mode": "passthrough", "Cache-Control": "no-store"},
    )
    sent = upstream.chat_calls[-1]
    assert "seed" not in sent.json() and "x-seedproxy-seed" not in raw.headers
    assert not any(h.lower() == "x-seedproxy-seed-mode" for h in sent.headers)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test",
        messages=MESSAGES,
        seed=7,
        extra_headers={"X-Seedproxy-Seed-Mode": "override"},
    )
    assert upstream.chat_calls[-1].json()["seed"] == 12345 == int(raw.headers["x-seedproxy-seed"])
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, extra_headers={"X-Seedproxy-Seed-Mode": "require"}
        )
    assert err.value.code == "missing_seed"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, extra_headers={"X-Seedproxy-Seed-Mode": "<b>"}
        )
    assert err.value.code == "invalid_seed_mode" and "passthrough" in err.value.message
    # without the header, seed.mode applies as before
    client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert upstream.chat_calls[-1].json()["seed"] == 12345


def probe(base_url: str, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(
        main,
        ["probe", "--model", "gpt-test", "--base-url", base_url, *args],
        env={"OPENAI_API_KEY": "none", **(env or {})},
    )


def test_probe_through_a_force_mode_proxy_sends_no_seed(proxy, upstream, tmp_path):
    """The README's experiment through seedproxy: unseeded, temperature 1, nondeterministic."""
    upstream.nondeterministic = True
    prompt = "Write <b>one</b> line"
    report = tmp_path / "probe.html"
    result = probe(
        proxy.base_url,
        "--runs",
        "3",
        "--no-seed",
        "--temperature",
        "1",
        "--prompt",
        prompt,
        "--json",
        "--html",
        str(report),
    )
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout)
    assert data["summary"]["identical_rate"] == 0.0
    assert [c.json().get("seed") for c in upstream.chat_calls] == [None] * 3
    html = report.read_text()
    assert escape(prompt) in html and prompt not in html
    assert escape(proxy.base_url) in html and " UTC" in html
    for run in data["runs"]:
        assert f"<pre class=output>{escape(run['text'])}</pre>" in html
    seeded = probe(proxy.base_url, "--runs", "2", "--seed", "7")
    assert seeded.exit_code == 0, seeded.output
    assert [c.json()["seed"] for c in upstream.chat_calls[3:]] == [7, 7]


def test_probe_fails_loudly_when_a_proxy_changes_its_seed(upstream):
    answer = upstream.completion({"messages": MESSAGES})
    upstream.script(Scripted(status=200, body=answer, headers={"X-Seedproxy-Seed": "12345"}))
    result = probe(f"{upstream.url}/v1", "--no-seed", "--runs", "2")
    assert result.exit_code == 2
    assert "sent seed 12345 upstream, but the probe chose none (--no-seed)" in result.output
    upstream.script(Scripted(status=200, body=answer, headers={"X-Seedproxy-Seed": "12345"}))
    result = probe(f"{upstream.url}/v1", "--seed", "7", "--runs", "2")
    assert result.exit_code == 2 and "the probe chose 7" in result.output


def test_probe_comparisons_count_beside_real_traffic(
    compared, upstream, run, store_config, tmp_path
):
    if store_config["backend"] == "disk":
        target = ["--cache-dir", store_config["dir"]]
    else:
        config = tmp_path / "redis.toml"
        config.write_text(
            f'[cache]\nbackend = "redis"\nredis_url = "{store_config["redis_url"]}"\n'
        )
        target = ["--config", str(config)]
    upstream.nondeterministic = True
    result = probe(f"{upstream.url}/v1", "--runs", "4", "--model", "gpt-d", *target)
    assert result.exit_code == 0, result.output
    rows = orjson.loads(run("determinism", "--json").stdout)["models"]
    assert [(r["model"], r["source"], r["compared"], r["identical"]) for r in rows] == [
        ("gpt-d", "traffic", 5, 4),
        ("gpt-d", "probe", 3, 0),
    ]
    assert rows[1]["fingerprints"][0]["fingerprint"] == "fp_two"
    assert "probe" in run("determinism").stdout
    # a probe is an experiment, not traffic: the gate reads traffic only
    assert run("determinism", "--fail-under", "0.8").returncode == 0


def test_divergence_positions_in_drift_determinism_and_metrics(compared, run):
    """Issue 32, item 3: the differing refresh's first divergence, wherever it is shown."""
    changed, event = orjson.loads(run("drift", "--json").stdout)  # newest first
    assert (changed["cached_fingerprint"], changed["live_fingerprint"]) == ("fp_one", "fp_two")
    for e in (changed, event):
        chars, words = e["divergence_chars"], e["divergence_words"]
        assert chars >= 1 and e["shared_prefix_chars"] == chars - 1 and words >= 1
    at = event["divergence_chars"]
    listed = orjson.loads(http(compared[1].url, "GET", "/_seedproxy/drift")[2])["drift"]
    assert [e["divergence_chars"] for e in listed] == [changed["divergence_chars"], at]
    shown = run("drift", "show", event["id"]).stdout
    line = f"first divergence at character {at}, word {event['divergence_words']}"
    assert line in shown and shown.index(line) < shown.index("--- cached")

    (row,) = orjson.loads(run("determinism", "--json").stdout)["models"]
    fp_one = row["fingerprints"][0]
    assert row["median_divergence_chars"] == fp_one["median_divergence_chars"]
    assert fp_one["median_divergence_chars"] == d.position_bucket(at)
    change = row["changes"][0]["median_divergence_chars"]
    assert change == d.position_bucket(changed["divergence_chars"])
    table = run("determinism").stdout
    assert "median divergence (chars)" in table

    counted: dict[str, float] = {}
    for proxy in compared:  # the replica that refreshed it observed it
        metrics = http(proxy.url, "GET", "/metrics")[2].decode()
        for family in text_string_to_metric_families(metrics):
            for s in family.samples:
                if s.name == "seedproxy_divergence_chars_count":
                    counted[s.labels["model"]] = counted.get(s.labels["model"], 0) + s.value
    assert counted == {"gpt-d": 2}  # the differing refresh and the fingerprint change


def test_metric_labels_for_client_chosen_models_are_bounded():
    from prometheus_client import CollectorRegistry

    metric = DivergenceMetric(CollectorRegistry(), ModelLabels())
    for i in range(MODEL_LABELS + 50):
        metric.observe(f"model-{i}", i + 1)
    metric.observe("model-0", 7)  # a model already labelled keeps its label
    labels = {s.labels["model"] for s in metric.histogram.collect()[0].samples}
    assert len(labels) == MODEL_LABELS + 1 and OTHER in labels and "model-0" in labels
