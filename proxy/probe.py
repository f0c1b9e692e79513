"""`seedproxy probe`: send one prompt N times and measure how deterministic the answers are.

The seed notebook's experiment as a tool: per run the fingerprint, tokens and whether the
output equals the first run's; then the identical-output rate, distinct fingerprints and mean
similarity, optionally as an HTML report with red/green diff tables."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from html import escape
from typing import Any

from . import drift, human
from .dashboard.html import diff_table, page, table


@dataclass(frozen=True, slots=True)
class Run:
    number: int
    fingerprint: str | None
    prompt_tokens: int
    completion_tokens: int
    text: str
    identical: bool  # output equals run 1's
    similarity: float  # to run 1's output


def make_run(number: int, completion: dict[str, Any], first: Run | None) -> Run:
    text = "\n".join(drift.render(drift.outputs(completion)))
    usage = completion.get("usage") or {}
    base = first.text if first else text
    return Run(
        number,
        completion.get("system_fingerprint"),
        usage.get("prompt_tokens") or 0,
        usage.get("completion_tokens") or 0,
        text,
        text == base,
        round(difflib.SequenceMatcher(None, base, text).ratio(), 4),
    )


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Identical-output rate and mean similarity over runs 2..N (compared with run 1)."""
    later = runs[1:]
    return {
        "runs": len(runs),
        "identical_rate": round(sum(r.identical for r in later) / len(later), 4) if later else 1.0,
        "distinct_outputs": len({r.text for r in runs}),
        "distinct_fingerprints": sorted({human.fingerprint(r.fingerprint) for r in runs}),
        "mean_similarity": round(sum(r.similarity for r in later) / len(later), 4)
        if later
        else 1.0,
    }


def probe(
    client: Any,
    model: str,
    messages: list[dict[str, str]],
    runs: int,
    seed: int | None,
    temperature: float | None,
    max_tokens: int | None,
) -> list[Run]:
    """Send the same request ``runs`` times, live (``Cache-Control: no-store`` tells a
    seedproxy in the way not to answer from or write to its cache)."""
    args: dict[str, Any] = {"model": model, "messages": messages}
    if seed is not None:
        args["seed"] = seed
    if temperature is not None:
        args["temperature"] = temperature
    if max_tokens is not None:
        args["max_tokens"] = max_tokens
    results: list[Run] = []
    for number in range(1, runs + 1):
        completion = client.chat.completions.create(
            **args, extra_headers={"Cache-Control": "no-store"}
        )
        results.append(make_run(number, completion.to_dict(), results[0] if results else None))
    return results


def report(runs: list[Run], settings: dict[str, Any]) -> dict[str, Any]:
    return {"settings": settings, "summary": summarize(runs), "runs": [asdict(r) for r in runs]}


def html_report(data: dict[str, Any]) -> str:
    """The report as one self-contained HTML page, a diff table per run that differs."""
    summary, settings, runs = data["summary"], data["settings"], data["runs"]
    first = runs[0]["text"].splitlines() if runs else []
    described = [
        human.seed(v) if k == "seed" else f"{k}={human.shown(v)}" for k, v in settings.items()
    ]
    parts = [
        f"<p class=meta>{escape(', '.join(described))}</p>",
        table(
            [
                "identical-output rate",
                "distinct outputs",
                "distinct fingerprints",
                "mean similarity",
            ],
            [
                [
                    f"{summary['identical_rate']:.0%}",
                    summary["distinct_outputs"],
                    ", ".join(summary["distinct_fingerprints"]),
                    summary["mean_similarity"],
                ]
            ],
        ),
        table(
            [
                "run",
                "fingerprint",
                "prompt tokens",
                "completion tokens",
                "same as run 1",
                "similarity",
            ],
            [
                [
                    r["number"],
                    human.fingerprint(r["fingerprint"]),
                    r["prompt_tokens"],
                    r["completion_tokens"],
                    "yes" if r["identical"] else "no",
                    r["similarity"],
                ]
                for r in runs
            ],
        ),
    ]
    for r in runs[1:]:
        if not r["identical"]:
            parts.append(
                f"<div class=event><h2>Run {r['number']} vs run 1</h2>"
                + diff_table(first, r["text"].splitlines(), "run 1", f"run {r['number']}")
                + "</div>"
            )
    return page("seedproxy probe", "".join(parts))
