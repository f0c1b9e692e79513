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
from .determinism import counts
from .policy import SEED_MODE_HEADER


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


# Every probe request goes live: ``no-store`` tells a seedproxy in the way not to answer from
# its cache, not to write to it and not to coalesce it with others; the seed-mode header, to
# send upstream the seed the probe chose (or none).
PROBE_HEADERS = {"Cache-Control": "no-store", SEED_MODE_HEADER: "passthrough"}


def request_args(
    model: str,
    messages: list[dict[str, str]],
    seed: int | None,
    temperature: float | None,
    max_tokens: int | None,
    logprobs: bool = False,
) -> dict[str, Any]:
    """The chat request every run sends: only the options the user gave."""
    args: dict[str, Any] = {"model": model, "messages": messages}
    if seed is not None:
        args["seed"] = seed
    if temperature is not None:
        args["temperature"] = temperature
    if max_tokens is not None:
        args["max_tokens"] = max_tokens
    if logprobs:
        args["logprobs"] = True
    return args


class SeedMismatch(RuntimeError):
    """A proxy in the way sent another seed upstream than the probe chose."""


def check_seed(echoed: str | None, seed: int | None) -> str | None:
    """What is wrong when a seedproxy in the way echoes (``X-Seedproxy-Seed``) a seed the
    probe did not choose: its runs would measure another experiment than the one asked."""
    if echoed is None or echoed == str(seed):
        return None
    chosen = "none (--no-seed)" if seed is None else str(seed)
    return (
        f"the proxy at the base URL sent seed {echoed} upstream, but the probe chose "
        f"{chosen}: it does not honour {SEED_MODE_HEADER}, so these runs would not measure "
        "what was asked. Upgrade seedproxy, or point --base-url at the upstream itself."
    )


def api_failure(exc: Exception) -> str:
    """What an API error a probe got means; a seedproxy in the way that keeps its seed
    policy to itself (403 ``seed_mode_not_allowed``) is named as such."""
    if getattr(exc, "code", None) == "seed_mode_not_allowed":
        return (
            f"the proxy at the base URL refuses {SEED_MODE_HEADER} (seed.allow_client_mode "
            "is false there, the default with auth.tokens), so the probe cannot send the seed "
            "it chose. Ask its operator to set seed.allow_client_mode = true, or point "
            "--base-url at the upstream itself."
        )
    return f"the API failed: {exc}"


def probe(client: Any, args: dict[str, Any], runs: int, seed: int | None) -> list[Run]:
    """Send the same request (``args``, see :func:`request_args`) ``runs`` times, one after
    the other, live (:data:`PROBE_HEADERS`)."""
    results: list[Run] = []
    for number in range(1, runs + 1):
        raw = client.chat.completions.with_raw_response.create(**args, extra_headers=PROBE_HEADERS)
        problem = check_seed(raw.headers.get("X-Seedproxy-Seed"), seed)
        if problem is not None:
            raise SeedMismatch(problem)
        completion = raw.parse()
        results.append(make_run(number, completion.to_dict(), results[0] if results else None))
    return results


def comparison_counts(runs: list[Run], model: str, when: float) -> dict[str, int]:
    """Each run compared with the first, as the proxy counts comparisons (marked as a
    probe's), so that `seedproxy determinism` shows a probe beside real traffic."""
    total: dict[str, int] = {}
    for run in runs[1:]:
        for name, n in counts(
            when,
            "/v1/chat/completions",
            model,
            runs[0].fingerprint,
            run.fingerprint,
            None if run.identical else run.similarity,
            source="probe",
        ).items():
            total[name] = total.get(name, 0) + n
    return total


def report(runs: list[Run], settings: dict[str, Any]) -> dict[str, Any]:
    return {"settings": settings, "summary": summarize(runs), "runs": [asdict(r) for r in runs]}


def _setting(name: str, value: Any) -> str:
    if name == "seed":
        return human.seed(value)
    if isinstance(value, bool):
        return human.yes_no(value)
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return human.shown(value)


def settings_table(settings: dict[str, Any]) -> str:
    """What was asked, where and when, as a report's first table."""
    return table(["setting", "value"], [[k, _setting(k, v)] for k, v in settings.items()])


def html_report(data: dict[str, Any]) -> str:
    """The report as one self-contained HTML page: what was asked, where and when, then
    each run's output beside its diff with run 1."""
    summary, settings, runs = data["summary"], data["settings"], data["runs"]
    first = runs[0]["text"].splitlines() if runs else []
    parts = [
        settings_table(settings),
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
    for r in runs:
        same = "" if r["number"] == 1 else (" (same as run 1)" if r["identical"] else " vs run 1")
        parts.append(
            f"<div class=event><h2>Run {r['number']}{same}</h2>"
            f"<pre class=output>{escape(r['text'])}</pre>"
        )
        if not r["identical"]:
            parts.append(diff_table(first, r["text"].splitlines(), "run 1", f"run {r['number']}"))
        parts.append("</div>")
    return page("seedproxy probe", "".join(parts))
