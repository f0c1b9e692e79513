"""The cache decision as a value: modes x Cache-Control x fingerprint policies x entry ages,
with no socket."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from proxy.config import CacheSettings
from proxy.policy import (
    SERVER_STATE,
    UNSEEDED,
    Bypass,
    Hit,
    Miss,
    ReplayMiss,
    Sighting,
    decide,
    looks_up,
    plan_request,
    uncached,
    wants_sightings,
)

NOW = 1_000_000.0
HOUR = 3600.0


@dataclass(frozen=True)
class V:
    fingerprint: str | None
    created: float


OLD_FP = V("fp_old", NOW - 10)  # its fingerprint was last seen live two hours ago
LIVE_FP = V("fp_live", NOW - 20)  # seen live a minute ago
STALE = V("fp_live", NOW - 2 * HOUR)  # older than the ttl below
SIGHTINGS = {
    "fp_old": Sighting("fp_old", NOW - 3 * HOUR, NOW - 2 * HOUR, 3),
    "fp_live": Sighting("fp_live", NOW - 3 * HOUR, NOW - 60, 9),
}


def cache(fingerprint: str = "current", ttl: float = 0.0) -> CacheSettings:
    return replace(CacheSettings(), fingerprint=fingerprint, ttl=ttl, fingerprint_window=HOUR)


# (mode, Cache-Control, fingerprint policy, stored variants, ttl) -> decision
TABLE = [
    # record: a hit when the policy allows a fresh variant, else a miss saying why
    ("record", None, "current", [], 0, Miss("absent")),
    ("record", None, "current", [LIVE_FP, OLD_FP], 0, Hit(LIVE_FP)),
    ("record", None, "current", [OLD_FP], 0, Miss("fingerprint")),
    ("record", None, "latest", [OLD_FP, LIVE_FP], 0, Hit(LIVE_FP)),
    ("record", None, "any", [OLD_FP, LIVE_FP], 0, Hit(OLD_FP)),  # the newest
    ("record", None, "current", [STALE], HOUR, Miss("expired")),
    ("record", "max-age=5", "any", [OLD_FP], 0, Miss("expired")),
    ("record", "max-age=60", "any", [OLD_FP], 0, Hit(OLD_FP)),
    # directives in record mode
    ("record", "no-cache", "current", [LIVE_FP], 0, Miss("refresh")),
    ("record", "no-store", "current", [LIVE_FP], 0, Bypass()),
    ("record", "only-if-cached", "current", [LIVE_FP], 0, Hit(LIVE_FP)),
    ("record", "only-if-cached", "current", [], 0, ReplayMiss("absent")),
    ("record", "only-if-cached", "current", [STALE], HOUR, ReplayMiss("expired")),
    # replay: the newest variant whatever its fingerprint; never the network
    ("replay", None, "current", [OLD_FP], 0, Hit(OLD_FP)),
    ("replay", None, "latest", [OLD_FP], 0, Hit(OLD_FP)),
    ("replay", None, "current", [], 0, ReplayMiss("absent")),
    ("replay", None, "any", [STALE], HOUR, ReplayMiss("expired")),
    ("replay", "no-cache", "current", [LIVE_FP], 0, ReplayMiss("refused")),
    ("replay", "no-store", "current", [LIVE_FP], 0, ReplayMiss("refused")),
    ("replay", "only-if-cached", "current", [LIVE_FP], 0, Hit(LIVE_FP)),
    # refresh and passthrough go live whatever is stored
    ("refresh", None, "current", [LIVE_FP], 0, Miss("refresh")),
    ("refresh", "only-if-cached", "current", [LIVE_FP], 0, Hit(LIVE_FP)),
    ("passthrough", None, "current", [LIVE_FP], 0, Bypass()),
    ("passthrough", "no-cache", "current", [LIVE_FP], 0, Miss("refresh")),
]


@pytest.mark.parametrize(("mode", "directive", "policy", "stored", "ttl", "expected"), TABLE)
def test_decide(mode, directive, policy, stored, ttl, expected):
    plan = plan_request(mode, directive)
    settings = cache(policy, ttl)
    sightings = SIGHTINGS if wants_sightings(plan, policy, fingerprinted=True) else {}
    variants = stored if looks_up(plan) else []
    assert decide(plan, variants, sightings, NOW, settings) == expected


def test_current_serves_anything_when_nothing_was_seen_live_lately():
    plan = plan_request("record", None)
    assert decide(plan, [OLD_FP], {}, NOW, cache()) == Hit(OLD_FP)  # cold start, offline


@pytest.mark.parametrize("mode", ["record", "refresh", "passthrough", "replay"])
def test_server_side_state_is_never_served_from_the_cache(mode):
    plan = plan_request(mode, None, SERVER_STATE)
    expected = ReplayMiss("refused") if mode == "replay" else Bypass()
    assert decide(plan, [LIVE_FP], {}, NOW, cache()) == expected


def test_what_is_never_cached():
    assert uncached(True, False, None, "force") == SERVER_STATE
    assert uncached(False, True, None, "require") == UNSEEDED  # a client's own seed mode
    assert uncached(False, True, 7, "require") == ""
    assert uncached(False, False, None, "require") == ""  # embeddings take no seed
    assert uncached(False, True, None, "passthrough") == ""  # the operator allows it
    for mode in ("record", "refresh", "passthrough"):
        assert decide(plan_request(mode, None, UNSEEDED), [LIVE_FP], {}, NOW, cache()) == Bypass()
    replay = plan_request("replay", None, UNSEEDED)
    assert replay.refused == UNSEEDED
    assert decide(replay, [LIVE_FP], {}, NOW, cache()) == ReplayMiss("refused")
    for never in (UNSEEDED, SERVER_STATE):  # only-if-cached is offline for these too
        asked = plan_request("record", "only-if-cached", never)
        assert (asked.refused, asked.asked) == (never, "only-if-cached")
        assert decide(asked, [LIVE_FP], {}, NOW, cache()) == ReplayMiss("refused")


def test_what_decide_needs_is_known_before_any_lookup():
    assert not looks_up(plan_request("passthrough", None))
    assert not looks_up(plan_request("replay", "no-cache"))  # refused: nothing to read
    assert looks_up(plan_request("refresh", None))  # compared with what was stored
    assert not wants_sightings(plan_request("replay", None), "current", True)
    assert not wants_sightings(plan_request("record", None), "any", True)
    assert not wants_sightings(plan_request("record", None), "current", False)  # embeddings


def test_a_miss_names_its_label():
    assert Miss("refresh").label == "REFRESH"
    assert Miss("expired").label == "MISS"


@pytest.mark.parametrize("value", ["²", "-1", "1.5", "", "abc"])
def test_odd_max_age_is_ignored(value):
    assert plan_request("record", f"max-age={value}").max_age is None
