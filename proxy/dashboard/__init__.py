"""The dashboard at ``GET /_seedproxy/``: stats, fingerprint history, recent drift with diffs.
Plain server-rendered HTML with no external assets."""

from __future__ import annotations

from typing import Any

from ..reports import iso
from .determinism import section
from .html import drift_event, page, table


def render(
    stats: dict[str, Any],
    fingerprints: dict[str, list[dict[str, Any]]],
    drift: list[dict[str, Any]],
    changes: list[dict[str, Any]],
    determinism: list[dict[str, Any]],
) -> str:
    money = stats.get("money_saved_usd")
    parts = [
        "<h2>Stats</h2>",
        table(
            [
                "requests",
                "hits",
                "misses",
                "hit ratio",
                "stores",
                "coalesced",
                "drift events",
                "fingerprint changes",
                "tokens served from cache",
                "money saved",
                "entries",
                "bytes",
            ],
            [
                [
                    stats["requests"],
                    stats["hits"],
                    stats["misses"],
                    f"{stats['hit_ratio']:.1%}",
                    stats["stores"],
                    stats["coalesced"],
                    stats["drift_events"],
                    stats["fingerprint_changes"],
                    stats["tokens_saved"],
                    f"${money:.4f}" if money is not None else "-",
                    stats["entries"],
                    stats["bytes"],
                ]
            ],
        ),
    ]

    parts.append("<h2>Fingerprints per model</h2>")
    if fingerprints:
        parts.append(
            table(
                ["model", "fingerprint", "first seen (UTC)", "last seen (UTC)", "count"],
                [
                    [model, s["fingerprint"], iso(s["first_seen"]), iso(s["last_seen"]), s["count"]]
                    for model, seen in fingerprints.items()
                    for s in seen
                ],
            )
        )
    else:
        parts.append("<p class=meta>No fingerprint seen live yet.</p>")
    if changes:
        parts.append(
            "<h2>Fingerprint changes</h2>"
            + table(
                ["time (UTC)", "model", "from", "to"],
                [[iso(c["time"]), c["model"], c["previous"], c["fingerprint"]] for c in changes],
            )
        )

    parts.append("<h2>Determinism per model</h2>" + section(determinism, fingerprints))
    parts.append("<h2>Recent drift</h2>")
    if not drift:
        parts.append(
            "<p class=meta>No drift recorded: every live answer matched the stored one.</p>"
        )
    parts.extend(drift_event(event) for event in drift)
    return page("seedproxy", "".join(parts))
