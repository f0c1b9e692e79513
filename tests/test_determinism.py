"""Determinism counts: the pure part (names, tallies, Wilson interval, seed-mode header)."""

from __future__ import annotations

import pytest

from proxy import determinism as d
from proxy.errors import ProxyError
from proxy.policy import Sighting

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
    assert d.seed_mode(None, "force") == "force"
    assert d.seed_mode(" Passthrough ", "force") == "passthrough"
    assert d.seed_mode("require", "passthrough") == "require"
    with pytest.raises(ProxyError) as err:
        d.seed_mode("<none>", "force")
    assert err.value.status == 400 and err.value.code == "invalid_seed_mode"
    assert "passthrough" in err.value.message
