"""Self-contained HTML pieces (no external assets): the page frame and red/green diff tables."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from html import escape
from typing import Any

from .. import human
from ..drift import TRUNCATED, bounded, sides
from ..reports import iso

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem; color: #1b1f24; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .5rem; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; }
.meta { color: #57606a; }
table.diff { font: 12px/1.4 ui-monospace, monospace; width: 100%; }
table.diff td { border: none; white-space: pre-wrap; word-break: break-word; }
.diff_header { background: #f6f8fa; color: #57606a; text-align: right; }
table.diff th.diff_header { text-align: left; }
.diff_next { display: none; }
.diff_sub { background: #ffc1c0; }
.diff_add { background: #abf2bc; }
table.diff td:nth-child(3) .diff_chg { background: #ffc1c0; }
table.diff td:nth-child(6) .diff_chg { background: #abf2bc; }
.event { border: 1px solid #d0d7de; border-radius: 6px; padding: .5rem 1rem;
         margin: 1rem 0; }
.ok { color: #1a7f37; } .bad { color: #cf222e; }
code.cmd { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 4px;
           padding: .1rem .35rem; user-select: all; }
form.refresh { float: right; }
"""


def page(title: str, body: str, head: str = "") -> str:
    """A whole page; ``head``: trusted markup for the head (no request or model text)."""
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>{head}"
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )


DRAWN_LINES = 200  # per side of a drawn diff: HtmlDiff costs more than linearly
DRAWN_CHARS = 20_000


def _drawn(lines: list[str]) -> list[str]:
    kept = bounded(lines[:DRAWN_LINES], DRAWN_CHARS)
    if len(lines) > DRAWN_LINES and kept[-1:] != [TRUNCATED]:
        kept.append(TRUNCATED)
    return kept


def diff_table(before: list[str], after: list[str], before_name: str, after_name: str) -> str:
    """A side-by-side table: removed text red, added text green (difflib.HtmlDiff), of at
    most :data:`DRAWN_LINES` lines and :data:`DRAWN_CHARS` characters a side."""
    before, after = _drawn(before), _drawn(after)
    table = difflib.HtmlDiff(wrapcolumn=90).make_table(before, after, before_name, after_name)
    if TRUNCATED in before[-1:] or TRUNCATED in after[-1:]:
        table += "<p class=meta>diff truncated: <code>seedproxy drift show</code> shows more</p>"
    return table


def table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def drift_event(event: Mapping[str, Any]) -> str:
    """A drift event: what, when, which fingerprints, its id with the command that shows
    it, and its red/green diff table."""
    cached, live = sides(event["diff"])
    same = "same fingerprint" if event["same_fingerprint"] else "fingerprint changed"
    event_id = escape(event["id"])
    return (
        f"<div class=event id='drift-{event_id}'>"
        f"<h3>{escape(event['model'])} &middot; {escape(event['reason'])} &middot; "
        f"{iso(event['time'])} UTC</h3>"
        f"<p class=meta>drift {event_id} &middot; "
        f"<code class=cmd>seedproxy drift show {event_id}</code></p>"
        f"<p class=meta>{escape(human.seed(event['seed']))} &middot; "
        f"{escape(human.fingerprint(event['cached_fingerprint']))} &rarr; "
        f"{escape(human.fingerprint(event['live_fingerprint']))} ({same}) &middot; "
        f"similarity {event['similarity']:.3f} &middot; "
        f"key {escape(event['key'][:16])}&hellip;</p>"
        + diff_table(cached, live, "cached", "live")
        + "</div>"
    )
