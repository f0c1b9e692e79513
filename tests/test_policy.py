import pytest

from proxy.errors import ProxyError
from proxy.policy import (
    Action,
    Sighting,
    add_seed,
    apply_seed,
    is_fresh,
    merge_sightings,
    observe_sighting,
    parse_cache_control,
    plan_request,
    select_variant,
)


@pytest.mark.parametrize(
    ("mode", "body", "expected"),
    [
        ("force", {}, 42),
        ("force", {"seed": 7}, 7),
        ("override", {}, 42),
        ("override", {"seed": 7}, 42),
        ("require", {"seed": 7}, 7),
        ("passthrough", {}, None),
        ("passthrough", {"seed": 7}, 7),
    ],
)
def test_seed_modes(mode, body, expected):
    assert apply_seed(body, mode, 42) == expected
    assert body.get("seed") == expected


def test_require_without_seed_is_missing_seed():
    with pytest.raises(ProxyError) as err:
        apply_seed({}, "require", 42)
    assert (err.value.status, err.value.code, err.value.param) == (400, "missing_seed", "seed")


@pytest.mark.parametrize("mode", ["force", "override", "require", "passthrough"])
@pytest.mark.parametrize("seed", [True, False, 1.5, 1.0, "7", None, [1], 2**63, -(2**63) - 1])
def test_invalid_seeds_rejected_in_every_mode(mode, seed):
    with pytest.raises(ProxyError) as err:
        apply_seed({"seed": seed}, mode, 42)
    assert err.value.code == "invalid_seed"


@pytest.mark.parametrize("seed", [0, -1, 2**63 - 1, -(2**63)])
def test_seed_range_edges_accepted(seed):
    assert apply_seed({"seed": seed}, "force", 42) == seed


def test_cache_control_parsing():
    assert parse_cache_control('No-Cache, max-age="30", foo') == {
        "no-cache": None,
        "max-age": "30",
        "foo": None,
    }
    assert parse_cache_control(None) == {}


@pytest.mark.parametrize(
    ("mode", "header", "action", "max_age"),
    [
        ("record", None, Action.RECORD, None),
        ("replay", None, Action.REPLAY, None),
        ("refresh", None, Action.REFRESH, None),
        ("passthrough", None, Action.BYPASS, None),
        ("record", "no-cache", Action.REFRESH, None),
        ("record", "no-store", Action.BYPASS, None),
        ("record", "no-cache, no-store", Action.BYPASS, None),
        ("record", "only-if-cached", Action.REPLAY, None),
        ("refresh", "only-if-cached", Action.REPLAY, None),
        ("record", "max-age=60", Action.RECORD, 60.0),
        ("record", "max-age=soon", Action.RECORD, None),
    ],
)
def test_plan(mode, header, action, max_age):
    plan = plan_request(mode, header)
    assert (plan.action, plan.max_age) == (action, max_age)


class V:
    def __init__(self, fingerprint, created):
        self.fingerprint, self.created = fingerprint, created


def sightings(**last_seen):
    return {fp: Sighting(fp, 0.0, t, 1) for fp, t in last_seen.items()}


OLD, NEW = V("fp_a", 10.0), V("fp_b", 20.0)


def test_any_and_replay_take_the_newest():
    reg = sightings(fp_c=99.0)
    assert select_variant([OLD, NEW], "any", reg, 60, 100, replay=False) is NEW
    assert select_variant([OLD, NEW], "latest", reg, 60, 100, replay=True) is NEW
    assert select_variant([], "any", reg, 60, 100, replay=True) is None


def test_latest_serves_only_the_most_recent_live_fingerprint():
    assert (
        select_variant([OLD, NEW], "latest", sightings(fp_a=90, fp_b=50), 60, 100, replay=False)
        is OLD
    )
    assert (
        select_variant([OLD], "latest", sightings(fp_a=50, fp_b=90), 60, 100, replay=False) is None
    )


def test_current_keeps_every_fingerprint_live_within_the_window():
    reg = sightings(fp_a=80, fp_b=90)
    assert select_variant([OLD], "current", reg, 60, 100, replay=False) is OLD
    assert select_variant([OLD, NEW], "current", reg, 60, 100, replay=False) is NEW
    # fp_a not seen for longer than the window while fp_b is live: fp_a is dropped
    assert (
        select_variant([OLD], "current", sightings(fp_a=10, fp_b=90), 60, 100, replay=False) is None
    )


def test_current_serves_when_nothing_contradicts():
    assert select_variant([OLD], "current", {}, 60, 100, replay=False) is OLD
    assert select_variant([OLD], "current", sightings(fp_b=1), 60, 100, replay=False) is OLD


def test_null_fingerprint_is_a_value():
    none_variant = V(None, 5.0)
    assert (
        select_variant(
            [none_variant, OLD],
            "latest",
            sightings(fp_a=1) | {None: Sighting(None, 0, 50, 1)},
            60,
            100,
            replay=False,
        )
        is none_variant
    )


def test_freshness():
    assert is_fresh(100, 150, ttl=0, max_age=None)
    assert not is_fresh(100, 150, ttl=30, max_age=None)
    assert not is_fresh(100, 150, ttl=0, max_age=10)
    assert is_fresh(100, 150, ttl=60, max_age=60)


def test_observe_sighting_reports_new_fingerprints_after_the_first():
    table, previous, new = observe_sighting({}, "fp_a", 1.0)
    assert (previous, new) == (None, False)
    table, previous, new = observe_sighting(table, "fp_b", 2.0)
    assert (previous, new) == ("fp_a", True)
    table, previous, new = observe_sighting(table, "fp_a", 3.0)
    assert (previous, new) == ("fp_b", False)
    assert table["fp_a"] == Sighting("fp_a", 1.0, 3.0, 2)


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        b" { } ",
        b'{"model":"m"}',
        b'\n{\n  "big": 123456789012345678901234567890\n}',
        b'{"x": {"y": [1, 2.50, "{"]}}',
    ],
)
def test_add_seed_keeps_every_other_byte(raw):
    import orjson

    spliced = add_seed(raw, 42)
    assert orjson.loads(spliced)["seed"] == 42
    assert spliced.replace(b'"seed":42,', b"").replace(b'"seed":42', b"") == raw


def test_merge_sightings_keeps_the_later_of_each():
    old = {"a": Sighting("a", 1, 5, 2), "b": Sighting("b", 1, 9, 1)}
    new = {"a": Sighting("a", 1, 7, 3)}
    assert merge_sightings(old, new) == {"a": Sighting("a", 1, 7, 3), "b": Sighting("b", 1, 9, 1)}
    assert merge_sightings(new, old) == merge_sightings(old, new)


def test_a_late_older_sighting_does_not_move_times_backwards():
    table, _, _ = observe_sighting({}, "a", 10.0)
    table, _, _ = observe_sighting(table, "a", 5.0)
    assert table["a"] == Sighting("a", 5.0, 10.0, 2)
