"""Seed policy, per-request cache directives and fingerprint-aware entry selection. Pure."""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

from .errors import ProxyError
from .runmodes import CacheMode

if TYPE_CHECKING:
    from .config import CacheSettings

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def apply_seed(body: dict[str, Any], mode: str, default: int) -> int | None:
    """Apply ``seed.mode`` to ``body`` in place; return the seed the upstream will see."""
    if "seed" in body:
        seed = body["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ProxyError(
                400,
                f"Invalid 'seed': expected an integer, got {seed!r}.",
                code="invalid_seed",
                param="seed",
            )
        if not INT64_MIN <= seed <= INT64_MAX:
            raise ProxyError(
                400,
                "Invalid 'seed': must fit in a signed 64-bit integer.",
                code="invalid_seed",
                param="seed",
            )
    if mode == "override" or (mode == "force" and "seed" not in body):
        body["seed"] = default
    elif mode == "require" and "seed" not in body:
        raise ProxyError(
            400,
            "Missing required parameter 'seed' (this proxy runs with seed.mode = \"require\").",
            code="missing_seed",
            param="seed",
        )
    return body.get("seed")


SEED_MODE_HEADER: Final = "X-Seedproxy-Seed-Mode"
SEED_MODES: Final = ("force", "override", "require", "passthrough")


def seed_mode(header: str | None, configured: str, allowed: bool) -> str:
    """The seed policy of one request: ``X-Seedproxy-Seed-Mode`` if sent (so a probe can
    reach the upstream with exactly the seed it chose, or none), else ``seed.mode``. The
    operator's policy wins: a header ``seed.allow_client_mode`` does not ``allowed`` is
    403, never quietly ignored (the client would measure what it did not ask for)."""
    if header is None:
        return configured
    if not allowed:
        raise ProxyError(
            403,
            f"This proxy does not let clients choose their seed policy: {SEED_MODE_HEADER} "
            f"is refused while seed.allow_client_mode is false (the default with auth.tokens). "
            f"Send the request without it, or ask the operator to set "
            f"seed.allow_client_mode = true.",
            code="seed_mode_not_allowed",
        )
    mode = header.strip().lower()
    if mode not in SEED_MODES:
        raise ProxyError(
            400,
            f"Invalid {SEED_MODE_HEADER} {header[:40]!r}: use one of {', '.join(SEED_MODES)}.",
            code="invalid_seed_mode",
        )
    return mode


def add_seed(raw: bytes, seed: int) -> bytes:
    """``raw`` (a JSON object without ``seed``) with ``"seed":N`` added after its opening
    brace; every other byte stays as the client sent it (no re-encoding, so no number is
    rounded and no key reordered)."""
    brace = raw.index(b"{")
    empty = raw[brace + 1 :].lstrip().startswith(b"}")
    return (
        raw[: brace + 1]
        + b'"seed":'
        + str(seed).encode()
        + (b"" if empty else b",")
        + raw[brace + 1 :]
    )


class Action(enum.Enum):
    """What to do with the cache for one request."""

    RECORD = "record"  # serve a hit; on a miss go live and store
    REPLAY = "replay"  # serve a hit; never go live
    REFRESH = "refresh"  # go live, compare with the stored entry, store
    BYPASS = "bypass"  # go live, store nothing


# What each cache mode does with a request that asks nothing of the cache itself.
MODE_ACTION: Final = {
    CacheMode.RECORD: Action.RECORD,
    CacheMode.REPLAY: Action.REPLAY,
    CacheMode.REFRESH: Action.REFRESH,
    CacheMode.PASSTHROUGH: Action.BYPASS,
}


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    max_age: float | None = None  # accept only entries younger than this (seconds)
    asked: str = ""  # the directive that chose the action ("" when cache.mode did)
    refused: str = ""  # what the request needs from the network, refused in replay mode


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Request ``Cache-Control`` directives, lower-cased; unknown ones are kept, values unquoted."""
    directives: dict[str, str | None] = {}
    for part in (value or "").split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            directives[name.strip().lower()] = arg.strip().strip('"') if arg else None
    return directives


SERVER_STATE: Final = "server-side state"  # Plan.refused of a stateful request
UNSEEDED: Final = 'no seed, while seed.mode is "require"'


def uncached(stateful: bool, seeded: bool, seed: int | None, configured: str) -> str:
    """Why a request's answer is never cached ("" when it may be): the server keeps it to
    be fetched later (``stateful``), or it goes upstream without a seed while
    ``seed.mode`` (``configured``) is ``require`` (only a client's own seed mode can send
    one): the operator's policy keeps it out of the cache whatever the client asked."""
    if stateful:
        return SERVER_STATE
    return UNSEEDED if seeded and seed is None and configured == "require" else ""


@functools.lru_cache(maxsize=256)  # nearly every request asks the same question
def plan_request(mode: CacheMode, cache_control: str | None, never: str = "") -> Plan:
    """Combine ``cache.mode`` with the request's directives, as an HTTP cache would.
    ``never``: why the answer is never cached (:func:`uncached`), "" when it may be.
    Replay mode, and ``only-if-cached``, are offline whatever else the request asks: what
    needs the network is refused."""
    d = parse_cache_control(cache_control)
    raw = d.get("max-age")
    max_age = float(raw) if raw is not None and raw.isascii() and raw.isdigit() else None
    live = never or next(
        (f"Cache-Control: {name}" for name in ("no-store", "no-cache") if name in d), ""
    )
    if mode == CacheMode.REPLAY:
        return Plan(Action.REPLAY, max_age, refused=live)
    if "only-if-cached" in d:  # offline for this request, even for what is never cached
        return Plan(Action.REPLAY, max_age, asked="only-if-cached", refused=never)
    if never:
        return Plan(Action.BYPASS)
    if "no-store" in d:
        return Plan(Action.BYPASS, max_age, asked="no-store")
    if "no-cache" in d:
        return Plan(Action.REFRESH, max_age, asked="no-cache")
    return Plan(MODE_ACTION[mode], max_age)


@dataclass(frozen=True, slots=True)
class Sighting:
    """How often and when a fingerprint was seen live for a model."""

    fingerprint: str | None
    first_seen: float
    last_seen: float
    count: int


class Variant(Protocol):
    """What selection reads of a stored entry (read-only, as the frozen Entry is)."""

    @property
    def fingerprint(self) -> str | None: ...

    @property
    def created(self) -> float: ...


V = TypeVar("V", bound=Variant)


def select_variant(
    variants: Sequence[V],
    policy: str,
    sightings: Mapping[str | None, Sighting],
    window: float,
    now: float,
    replay: bool,
) -> V | None:
    """The stored variant (newest first) the fingerprint policy allows, or None."""
    if not variants:
        return None
    newest = variants[0] if len(variants) == 1 else max(variants, key=lambda v: v.created)
    if replay or policy == "any" or not sightings:
        return newest
    if policy == "latest":
        allowed = {max(sightings.values(), key=lambda s: s.last_seen).fingerprint}
    else:  # current
        allowed = {fp for fp, s in sightings.items() if now - s.last_seen <= window}
        if not allowed:
            return newest
    candidates = [v for v in variants if v.fingerprint in allowed]
    return max(candidates, key=lambda v: v.created) if candidates else None


def is_fresh(created: float, now: float, ttl: float, max_age: float | None) -> bool:
    """Whether an entry is young enough for ``cache.ttl`` (0 = forever) and ``max-age``."""
    age = now - created
    if ttl and age > ttl:
        return False
    return max_age is None or age <= max_age


def observe_sighting(
    sightings: Mapping[str | None, Sighting], fingerprint: str | None, now: float
) -> tuple[dict[str | None, Sighting], str | None, bool]:
    """Record a live fingerprint; return the new table, the previous latest and whether it's new."""
    table = dict(sightings)
    previous = max(table.values(), key=lambda s: s.last_seen).fingerprint if table else None
    old = table.get(fingerprint)
    is_new = old is None and bool(table)
    # another process may record a later sighting first: times never move backwards
    table[fingerprint] = Sighting(
        fingerprint,
        min(old.first_seen, now) if old else now,
        max(old.last_seen, now) if old else now,
        (old.count if old else 0) + 1,
    )
    return table, previous, is_new


def merge_sightings(
    a: Mapping[str | None, Sighting], b: Mapping[str | None, Sighting]
) -> dict[str | None, Sighting]:
    """Two views of a registry as one: per fingerprint, the later sighting wins."""
    merged = dict(a)
    for fingerprint, seen in b.items():
        mine = merged.get(fingerprint)
        if mine is None or seen.last_seen > mine.last_seen:
            merged[fingerprint] = seen
    return merged


@dataclass(frozen=True, slots=True)
class Hit(Generic[V]):
    """Serve this stored variant."""

    entry: V


@dataclass(frozen=True, slots=True)
class Miss:
    """Go live and store; ``reason`` (absent, expired, fingerprint, refresh) names what a
    comparison with the stored variants is about."""

    reason: str

    @property
    def label(self) -> str:
        return "REFRESH" if self.reason == "refresh" else "MISS"


@dataclass(frozen=True, slots=True)
class ReplayMiss:
    """Answer ``cache_miss``: nothing servable is stored (absent, expired) or the request
    needs the network in replay mode (refused)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Bypass:
    """Go live, store nothing."""


Decision = Hit[V] | Miss | ReplayMiss | Bypass


def looks_up(plan: Plan) -> bool:
    """Whether :func:`decide` needs the stored variants for ``plan`` (a refresh compares
    with them)."""
    return plan.action is not Action.BYPASS and not plan.refused


def wants_sightings(plan: Plan, policy: str, fingerprinted: bool) -> bool:
    """Whether :func:`decide` needs the model's fingerprint registry for ``plan``."""
    return plan.action is Action.RECORD and policy != "any" and fingerprinted


def decide(
    plan: Plan,
    variants: Sequence[V],
    sightings: Mapping[str | None, Sighting],
    now: float,
    cache: CacheSettings,
) -> Decision[V]:
    """What to do with one request, given what is stored for its key (newest first), the
    model's fingerprint sightings, the time and ``cache`` (fingerprint policy, window, ttl)."""
    if plan.action is Action.BYPASS:
        return Bypass()
    if plan.action is Action.REFRESH:
        return Miss("refresh")
    replay = plan.action is Action.REPLAY
    if replay and plan.refused:
        return ReplayMiss("refused")
    chosen = select_variant(
        variants, cache.fingerprint, sightings, cache.fingerprint_window, now, replay
    )
    if chosen is not None and is_fresh(chosen.created, now, cache.ttl, plan.max_age):
        return Hit(chosen)
    reason = "absent" if not variants else "expired" if chosen is not None else "fingerprint"
    return ReplayMiss(reason) if replay else Miss(reason)


class Outcome(enum.Enum):
    """What a fetch brought back (an incomplete stream or a body that is not a JSON object
    never gets here: the fetch answers 502 for it)."""

    ANSWER = "answer"  # a complete 2xx answer of the endpoint (a stream read to its end)
    ERROR = "upstream error"  # a non-2xx answer: the caller's own
    NOT_ANSWER = "not an answer"  # 2xx, but not the endpoint's answer ({}, an error object)


@dataclass(frozen=True, slots=True)
class Keep:
    """Store the answer, note it for the registry, compare it with the stored variants."""


@dataclass(frozen=True, slots=True)
class Compare:
    """Note the answer and compare it with the stored variant, which stays in place."""


@dataclass(frozen=True, slots=True)
class Discard:
    """Neither store nor compare the answer, for ``reason``."""

    reason: str


Recorded = Keep | Compare
AfterFetch = Keep | Compare | Discard

VERIFY: Final = "verify"  # the reason of a hit's background re-request


def after_fetch(
    plan: Plan, reason: str, outcome: Outcome, client_gone: bool, cache: CacheSettings
) -> AfterFetch:
    """What becomes of a live answer fetched for ``reason`` (a :class:`Miss`'s, or
    :data:`VERIFY`). Only a complete 2xx answer is kept; never one whose plan bypasses the
    cache (no-store, server-side state, unseeded under ``require``); a verification
    replaces the stored answer only with ``cache.verify_replace``; a streaming client that
    left (``client_gone``) stops the store only when ``cache.complete_on_disconnect`` is
    off, since then the upstream read was given up for it."""
    if outcome is not Outcome.ANSWER:
        return Discard(outcome.value)
    if plan.action is Action.BYPASS:
        return Discard(plan.asked or "bypass")
    if reason == VERIFY:
        return Keep() if cache.verify_replace else Compare()
    if plan.action is Action.REPLAY:  # replay never goes live but to verify
        return Discard("replay")
    if client_gone and not cache.complete_on_disconnect:
        return Discard("the client left")
    return Keep()
