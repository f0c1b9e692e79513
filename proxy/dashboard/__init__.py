"""The dashboard at ``GET /_seedproxy/``: stats, fingerprint history, recent drift with diffs.
Plain server-rendered HTML with no external assets."""

from __future__ import annotations

from typing import Any

from .. import human
from ..reports import FINGERPRINT_HEADERS, fingerprint_rows, iso
from .determinism import section
from .html import drift_event, page, table

REFRESH_CHOICES = (5, 10, 30, 60)  # seconds, offered on the page


def refresh_seconds(raw: str | None) -> int | None:
    """The page's ``?refresh=N``: one of the offered intervals, else no refresh."""
    return int(raw) if raw is not None and raw in {str(n) for n in REFRESH_CHOICES} else None


def _refresh_form(refresh: int | None) -> str:
    """A GET form that reloads the page with ``?refresh=N`` (or without it): the refresh
    itself is a ``<meta http-equiv=refresh>``, so it works with scripts off too."""
    options = "<option value=''>off</option>" + "".join(
        f"<option value={n}{' selected' if n == refresh else ''}>every {n} s</option>"
        for n in REFRESH_CHOICES
    )
    return (
        "<form class=refresh method=get action=''>"
        "<label>Refresh <select name=refresh onchange='this.form.submit()'>"
        f"{options}</select></label> <button type=submit>apply</button></form>"
    )


def render(
    stats: dict[str, Any],
    fingerprints: dict[str, list[dict[str, Any]]],
    drift: list[dict[str, Any]],
    changes: list[dict[str, Any]],
    determinism: list[dict[str, Any]],
    facts: list[tuple[str, str]],
    refresh: int | None = None,
) -> str:
    """The page. ``facts``: what the proxy does (:func:`proxy.human.proxy_facts`);
    ``refresh``: seconds between reloads, None for none."""
    parts = [
        _refresh_form(refresh),
        "<h2>Proxy</h2>",
        table(["setting", "value"], [list(fact) for fact in facts]),
        "<h2>Stats</h2>",
        table(["stat", "value"], [list(row) for row in human.stat_rows(stats)]),
    ]

    parts.append("<h2>Fingerprints per model</h2>")
    if fingerprints:
        parts.append(table(FINGERPRINT_HEADERS, fingerprint_rows(fingerprints)))
    else:
        parts.append("<p class=meta>No fingerprint seen live yet.</p>")
    if changes:
        parts.append(
            "<h2>Fingerprint changes</h2>"
            + table(
                ["time (UTC)", "model", "from", "to"],
                [
                    [
                        iso(c["time"]),
                        c["model"],
                        human.fingerprint(c["previous"]),
                        human.fingerprint(c["fingerprint"]),
                    ]
                    for c in changes
                ],
            )
        )

    parts.append("<h2>Determinism per model</h2>" + section(determinism, fingerprints))
    parts.append("<h2>Recent drift</h2>")
    if not drift:
        parts.append(
            "<p class=meta>No drift recorded: every live answer matched the stored one.</p>"
        )
    parts.extend(drift_event(event) for event in drift)
    head = f"<meta http-equiv=refresh content={refresh}>" if refresh else ""
    return page("seedproxy", "".join(parts), head)
