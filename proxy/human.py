"""How values read in text meant for people (the CLI's tables, the start-up line, the
dashboard): no Python ``None`` or ``True``, plurals that agree, no password in a URL.
JSON output keeps the raw values; only what a person reads goes through here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import Settings
from .urls import masked_url


def plural(count: int, noun: str, nouns: str = "") -> str:
    """``"1 entry"``, ``"2 entries"``: ``nouns`` when the plural is not ``noun + "s"``."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


NO_FINGERPRINT = "null"  # a model that gives none, in text, headers and --fingerprint


def fingerprint(value: str | None) -> str:
    """:data:`NO_FINGERPRINT` for a model that gives none, spelled as
    ``X-Seedproxy-Fingerprint`` and ``seedproxy purge --fingerprint null`` spell it."""
    return NO_FINGERPRINT if value is None else value


def seed(value: int | None) -> str:
    """The seed as a phrase: ``"seed 7"``, or ``"no seed"`` for a request sent without one."""
    return "no seed" if value is None else f"seed {value}"


def count(value: int | None) -> str:
    """A count, or ``-`` where there is nothing to count."""
    return "-" if value is None else str(value)


def divergence(event: Mapping[str, Any]) -> str:
    """Where a drift event's outputs first differ, as ``seedproxy drift show`` prints it
    (events stored before positions were recorded have none)."""
    chars = event.get("divergence_chars")
    if chars is None:
        recorded = "divergence_chars" in event
        return "first divergence: " + ("none in the text" if recorded else "not recorded")
    return (
        f"first divergence at character {chars}, word {event.get('divergence_words')} "
        f"({plural(event.get('shared_prefix_chars') or 0, 'character')} shared)"
    )


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def shown(value: object, none: str = "default") -> str:
    """``value`` as text, ``none`` when unset: an option left out is the API's default."""
    return none if value is None else str(value)


# Characters a terminal acts on: C0 controls but the tab, DEL, C1 controls, and the Unicode
# line and paragraph separators (a model's output may hold an OSC 52 clipboard write).
_TERMINAL_UNSAFE = {
    c: f"\\u{c:04x}" for c in (*range(0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}


def terminal_safe(text: str) -> str:
    """Stored ``text`` fit to print: what a terminal would act on, as ``\\uXXXX``."""
    return text.translate(_TERMINAL_UNSAFE)


def proxy_facts(settings: Settings, auth: bool) -> list[tuple[str, str]]:
    """What the proxy will do, as (name, value) pairs: the start-up line and the dashboard
    both show these. ``auth``: proxy tokens are set."""
    s = settings
    store = s.cache.dir if s.cache.backend == "disk" else masked_url(s.cache.redis_url)
    seeded = s.seed.mode + (f" ({s.seed.default})" if s.seed.mode in ("force", "override") else "")
    return [
        ("upstream", masked_url(s.upstream.base_url)),
        ("mode", s.cache.mode),
        ("seed", seeded),
        ("fingerprint", s.cache.fingerprint),
        ("cache", f"{s.cache.backend}:{store}"),
        ("scope", s.cache.scope),
        ("auth", "on" if auth else "off"),
    ]


# Stats in the order people read them, with their names; any other counter follows under its
# own name, so a new one shows without a change here.
_STAT_NAMES = {
    "requests": "requests",
    "hits": "hits",
    "misses": "misses",
    "hit_ratio": "hit ratio",
    "replay_misses": "replay misses",
    "refreshes": "refreshes",
    "bypasses": "bypasses",
    "stores": "stores",
    "coalesced": "coalesced",
    "upstream_errors": "upstream errors",
    "verifications": "verifications",
    "verify_skipped": "verifications skipped",
    "drift_events": "drift events",
    "fingerprint_changes": "fingerprint changes",
    "tokens_saved": "tokens served from cache",
    "prompt_tokens_saved": "prompt tokens served from cache",
    "completion_tokens_saved": "completion tokens served from cache",
    "money_saved_usd": "money saved",
    "entries": "entries",
    "bytes": "bytes",
}


def stat_rows(stats: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every stat as (name, value), in reading order."""
    order = [k for k in _STAT_NAMES if k in stats] + [k for k in stats if k not in _STAT_NAMES]
    rows = []
    for key in order:
        value = stats[key]
        if key == "hit_ratio":
            shown = f"{value:.1%}"
        elif key == "money_saved_usd":
            shown = f"${value:.4f}" if value is not None else "(set [prices] to see it)"
        else:
            shown = str(value)
        rows.append((_STAT_NAMES.get(key, key.replace("_", " ")), shown))
    return rows
