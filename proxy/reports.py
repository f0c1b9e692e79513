"""What the CLI and the admin endpoints report from a store: stats, drift, fingerprints."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

from .config import Settings, parse_duration
from .determinism import report as determinism_report
from .determinism import tallies
from .human import fingerprint, terminal_safe
from .observe import COUNTERS
from .store import Store


def parse_since(value: str, now: float | None = None) -> float:
    """A point in time from a duration ago (``"2h"``) or an ISO date/time (UTC if naive)."""
    now = time.time() if now is None else now
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"expected a duration such as '2h' or a date such as 2026-01-31, got {value!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


async def stats(
    store: Store, settings: Settings, pending: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Counters summed over every process that shares ``store``, plus size and savings."""
    counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
    for name, value in (await store.counters()).items():
        counts[name] = counts.get(name, 0) + value
    for name, value in (pending or {}).items():
        counts[name] = counts.get(name, 0) + value
    entries, volume = await store.size()
    looked_up = counts["hits"] + counts["misses"] + counts["replay_misses"]
    saved = 0.0
    for model, (prompt_price, completion_price) in settings.prices.items():
        saved += (
            counts.get(f"saved_prompt:{model}", 0) * prompt_price
            + counts.get(f"saved_completion:{model}", 0) * completion_price
        ) / 1e6
    result: dict[str, Any] = {name: counts[name] for name in COUNTERS}
    result.update(
        {
            "hit_ratio": round(counts["hits"] / looked_up, 4) if looked_up else 0.0,
            "tokens_saved": counts["prompt_tokens_saved"] + counts["completion_tokens_saved"],
            "money_saved_usd": round(saved, 6) if settings.prices else None,
            "entries": entries,
            "bytes": volume,
        }
    )
    return result


EVENT_BATCH = 100  # events read at a time while filtering
PAGE_DIFF_CHARS = 8_000_000  # diff characters in one page at most (a diff has up to 128,000)


async def drift_page(
    store: Store,
    model: str | None = None,
    since: float | None = None,
    limit: int = 100,
    kind: str = "drift",
    offset: int = 0,
    owner: str | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Events of ``kind``, newest first, filtered by model, time and ``owner`` (per-key
    scope: only that credential scope's drift), from the ``offset`` newest on; and the
    offset of the next page (None at the end). Events are read a batch at a time, never
    all that are kept, and a page ends early once its diffs hold :data:`PAGE_DIFF_CHARS`."""
    out: list[dict[str, Any]] = []
    held = 0
    filtered = model is not None or owner is not None
    size = EVENT_BATCH if filtered else min(EVENT_BATCH, limit)
    while True:
        batch = await store.events(kind, size, offset)
        for event in batch:
            if since is not None and event.get("time", 0) < since:
                return out, None
            offset += 1
            if (model is None or event.get("model") == model) and (
                owner is None or event.get("owner") == owner
            ):
                out.append(event)
                held += len(event.get("diff") or "")
                if len(out) >= limit or held >= PAGE_DIFF_CHARS:
                    return out, offset
        if len(batch) < size:
            return out, None


async def drift(
    store: Store,
    model: str | None = None,
    since: float | None = None,
    limit: int = 100,
    kind: str = "drift",
    owner: str | None = None,
) -> list[dict[str, Any]]:
    """Events of ``kind``, newest first, filtered by model, time and owner."""
    return (await drift_page(store, model, since, limit, kind, owner=owner))[0]


async def fingerprints(store: Store, model: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per model, each fingerprint seen live with first/last seen and count, newest first."""
    models = [model] if model else await store.models()
    table = {}
    for name in models:
        sightings = await store.sightings(name)
        if sightings:
            table[name] = [
                {
                    "fingerprint": s.fingerprint,
                    "first_seen": s.first_seen,
                    "last_seen": s.last_seen,
                    "count": s.count,
                }
                for s in sorted(sightings.values(), key=lambda s: s.last_seen, reverse=True)
            ]
    return table


FINGERPRINT_HEADERS = ["model", "fingerprint", "first seen (UTC)", "last seen (UTC)", "count"]


def fingerprint_rows(table: Mapping[str, list[dict[str, Any]]]) -> list[list[Any]]:
    """:func:`fingerprints`'s table as the rows the CLI and the dashboard show, under
    :data:`FINGERPRINT_HEADERS`."""
    return [
        [name, fingerprint(s["fingerprint"]), iso(s["first_seen"]), iso(s["last_seen"]), s["count"]]
        for name, seen in table.items()
        for s in seen
    ]


def text_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns aligned for a terminal; what a cell holds (model names, fingerprints: stored
    data) is escaped where a terminal would act on it."""
    cells = [[str(h) for h in headers], *[[terminal_safe(str(c)) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def determinism(
    store: Store, model: str | None = None, since: float | None = None
) -> list[dict[str, Any]]:
    """Identical-output rates per model and fingerprint (see :func:`proxy.determinism.report`),
    with first/last seen from the fingerprint registry."""
    counts = tallies(await store.counters(), since, model)
    sightings = {name: await store.sightings(name) for name in {pair[1] for pair in counts}}
    return determinism_report(counts, sightings)
