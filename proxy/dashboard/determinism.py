"""How deterministic each model is, as HTML: a fingerprint timeline (inline SVG) and the
identical-output rate per fingerprint; used by the dashboard and `seedproxy determinism
--html`. Every name that came from a request or a model is escaped."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from ..human import count
from ..human import fingerprint as shown_fingerprint
from ..reports import iso
from .html import drift_event, page, table

WIDTH, LABEL, ROW = 760, 200, 22  # SVG width, label column and row height, in pixels
COLOURS = ("#0969da", "#8250df", "#bf8700", "#1a7f37", "#cf222e", "#57606a")
RATE_HEADERS = [
    "fingerprint",
    "source",
    "compared",
    "identical",
    "identical rate",
    "95% interval",
    "mean similarity (differing)",
    "median divergence (chars)",
    "first seen (UTC)",
    "last seen (UTC)",
]


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def interval(counts: Mapping[str, Any]) -> str:
    low, high = counts["wilson_low"], counts["wilson_high"]
    return "-" if low is None else f"{low:.1%} to {high:.1%}"


def similarity(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def across(row: Mapping[str, Any]) -> str:
    """The cross-fingerprint rate and its count, or "-" when nothing was compared across."""
    cross = row["cross_fingerprint"]
    return f"{percent(cross['rate'])} of {cross['compared']}" if cross["compared"] else "-"


def rate_rows(row: Mapping[str, Any]) -> list[list[object]]:
    """One line per fingerprint, one per fingerprint change, and the same-fingerprint total."""
    lines: list[list[object]] = []
    for fp in row["fingerprints"]:
        lines.append(
            [
                shown_fingerprint(fp["fingerprint"]),
                row["source"],
                fp["compared"],
                fp["identical"],
                percent(fp["rate"]),
                interval(fp),
                similarity(fp["mean_similarity"]),
                count(fp["median_divergence_chars"]),
                iso(fp["first_seen"]),
                iso(fp["last_seen"]),
            ]
        )
    for change in row["changes"]:
        lines.append(
            [
                f"{shown_fingerprint(change['from'])} -> {shown_fingerprint(change['to'])}",
                row["source"],
                change["compared"],
                change["identical"],
                percent(change["rate"]),
                interval(change),
                similarity(change["mean_similarity"]),
                count(change["median_divergence_chars"]),
                "-",
                "-",
            ]
        )
    return lines


def timeline(seen: Sequence[Mapping[str, Any]], now: float) -> str:
    """Each fingerprint a bar from first to last seen live, on one time axis, newest on top."""
    if not seen:
        return "<p class=meta>No fingerprint seen live yet.</p>"
    start = min(s["first_seen"] for s in seen)
    end = max(now, max(s["last_seen"] for s in seen))
    span = max(end - start, 1.0)
    plot = WIDTH - LABEL - 10
    height = ROW * len(seen) + 24
    parts = [
        f"<svg class=timeline xmlns='http://www.w3.org/2000/svg' width={WIDTH} "
        f"height={height} viewBox='0 0 {WIDTH} {height}' role=img>"
    ]
    for i, s in enumerate(seen):
        name = escape(shown_fingerprint(s["fingerprint"]))
        y = ROW * i
        x = LABEL + (s["first_seen"] - start) / span * plot
        width = max(3.0, (s["last_seen"] - s["first_seen"]) / span * plot)
        parts.append(
            f"<text x=0 y={y + 15} font-size=12>{name}</text>"
            f"<rect x={x:.1f} y={y + 4} width={width:.1f} height={ROW - 8} rx=3 "
            f"fill='{COLOURS[i % len(COLOURS)]}'><title>{name}: {iso(s['first_seen'])} to "
            f"{iso(s['last_seen'])} UTC, seen {int(s['count'])} times</title></rect>"
        )
    axis = ROW * len(seen) + 16
    parts.append(
        f"<text x={LABEL} y={axis} font-size=11 fill='#57606a'>{iso(start)}</text>"
        f"<text x={WIDTH - 10} y={axis} font-size=11 fill='#57606a' "
        f"text-anchor=end>{iso(end)} UTC</text></svg>"
    )
    return "".join(parts)


def section(
    rows: Sequence[Mapping[str, Any]],
    fingerprints: Mapping[str, Sequence[Mapping[str, Any]]],
    now: float | None = None,
) -> str:
    """Per model: its fingerprint timeline, then its rates per fingerprint and source."""
    now = time.time() if now is None else now
    models = sorted({r["model"] for r in rows} | set(fingerprints))
    if not models:
        return "<p class=meta>No live answer has been compared with a stored one yet.</p>"
    parts = []
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        parts.append(f"<div class=determinism><h3>{escape(model)}</h3>")
        parts.append(timeline(fingerprints.get(model, []), now))
        summary = [
            f"{escape(r['source'])}: same fingerprint {percent(r['rate'])} of "
            f"{r['compared']} ({interval(r)}), across fingerprints {across(r)}"
            for r in mine
        ]
        if summary:
            parts.append(f"<p class=meta>{' &middot; '.join(summary)}</p>")
            parts.append(table(RATE_HEADERS, [line for r in mine for line in rate_rows(r)]))
        else:
            parts.append("<p class=meta>No comparison counted for this model yet.</p>")
        parts.append("</div>")
    return "".join(parts)


def report_page(
    rows: Sequence[Mapping[str, Any]],
    fingerprints: Mapping[str, Sequence[Mapping[str, Any]]],
    drift: Sequence[Mapping[str, Any]],
    since: float | None,
    now: float,
) -> str:
    """`seedproxy determinism --html`: one self-contained page, the seed notebook's view
    over all traffic."""
    scope = f"since {iso(since)} UTC" if since is not None else "all time"
    parts = [
        f"<p class=meta>Generated {iso(now)} UTC &middot; comparisons {scope}</p>",
        "<h2>Identical-output rate per model</h2>",
        section(rows, fingerprints, now),
        "<h2>Recent drift</h2>",
    ]
    if not drift:
        parts.append("<p class=meta>No drift recorded.</p>")
    parts.extend(drift_event(event) for event in drift)
    return page("seedproxy determinism", "".join(parts))
