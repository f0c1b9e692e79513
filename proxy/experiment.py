"""`seedproxy probe --concurrency C1,C2,...`: the load experiment.

Thinking Machines Lab ("Defeating Nondeterminism in LLM Inference", 2025) found that the
main cause of different answers to one temperature-0 request is load: the batch a request
lands in depends on how many others are in flight. This sends the same request N times at
each concurrency level and measures, per level, how often the answer equals the level's most
common one (with a Wilson interval) and where the others first diverge from it. The levels
take turns in rounds, so a backend that changes during the experiment affects every level
alike; each level has a connection pool of its own."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from . import drift, human
from .dashboard.html import diff_table, page
from .determinism import wilson
from .probe import PROBE_HEADERS, Run, SeedMismatch, check_seed, settings_table
from .reports import text_table

MAX_CONCURRENCY = 256  # in flight at once from one probe: a bound, not a tuning knob


@dataclass(frozen=True, slots=True)
class Answer:
    """One run's answer: the text a divergence is measured in, its fingerprint, and its
    tokens when the request asked for logprobs and the answer carries them."""

    text: str
    fingerprint: str | None
    tokens: tuple[str, ...] | None


def answer(completion: dict[str, Any]) -> Answer:
    tokens: list[str] = []
    carried = False
    for choice in sorted(completion.get("choices") or [], key=lambda c: c.get("index", 0)):
        content = (choice.get("logprobs") or {}).get("content")
        if isinstance(content, list):
            carried = True
            tokens.extend(str(t.get("token", "")) for t in content if isinstance(t, dict))
    return Answer(
        drift.text(drift.outputs(completion)),
        completion.get("system_fingerprint"),
        tuple(tokens) if carried else None,
    )


def token_divergence(a: Sequence[str], b: Sequence[str]) -> int:
    """The position, counted from 1, of the first token where ``a`` and ``b`` differ (or
    where the shorter one ended), as :class:`proxy.drift.Divergence` counts characters."""
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    return (min(len(a), len(b)) if n is None else n) + 1


def spread(values: Sequence[int]) -> dict[str, float] | None:
    """Min, median and 90th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p90": ordered[math.ceil(0.9 * len(ordered)) - 1],
    }


@dataclass(frozen=True, slots=True)
class Level:
    """What the runs at one concurrency level gave, measured against their most common
    answer (``mode``); ``chars``, ``words`` and ``tokens`` hold the first divergence of each
    differing run (``tokens`` None when logprobs were not asked for)."""

    concurrency: int
    runs: int
    unique: int
    mode_count: int
    fingerprints: list[str | None]
    chars: list[int]
    words: list[int]
    tokens: list[int] | None
    mode: str
    others: list[str]  # the distinct answers that are not the mode

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.mode_count, self.runs)

    @property
    def identical_rate(self) -> float:
        return self.mode_count / self.runs

    def to_json(self) -> dict[str, Any]:
        low, high = self.interval
        data: dict[str, Any] = {
            "concurrency": self.concurrency,
            "runs": self.runs,
            "unique": self.unique,
            "mode_count": self.mode_count,
            "identical_rate": round(self.identical_rate, 4),
            "wilson_low": round(low, 4),
            "wilson_high": round(high, 4),
            "fingerprints": self.fingerprints,
            "divergence_chars": spread(self.chars),
            "divergence_words": spread(self.words),
        }
        if self.tokens is not None:
            data["divergence_tokens"] = spread(self.tokens)
        return data


def level(concurrency: int, answers: Sequence[Answer], logprobs: bool) -> Level:
    """The statistics of one level's answers (at least one). Ties for the most common
    answer go to the one seen first."""
    tally = Counter(a.text for a in answers)
    mode, mode_count = tally.most_common(1)[0]
    mode_tokens = next(a.tokens for a in answers if a.text == mode)
    chars, words, tokens = [], [], []
    for a in answers:
        where = drift.divergence(mode, a.text)
        if where is None:
            continue
        chars.append(where.chars)
        words.append(where.words)
        if mode_tokens is not None and a.tokens is not None:
            tokens.append(token_divergence(mode_tokens, a.tokens))
    return Level(
        concurrency,
        len(answers),
        len(tally),
        mode_count,
        sorted({a.fingerprint for a in answers}, key=lambda f: (f is not None, f or "")),
        chars,
        words,
        tokens if logprobs else None,
        mode,
        [text for text in tally if text != mode],
    )


def load_dependent(levels: Sequence[Level]) -> bool:
    """Whether the lowest and the highest level's 95% intervals of the identical rate do
    not overlap: the answers then depend on how many requests are in flight."""
    low, high = min(levels, key=lambda v: v.concurrency), max(levels, key=lambda v: v.concurrency)
    (a_low, a_high), (b_low, b_high) = low.interval, high.interval
    return a_high < b_low or b_high < a_low


def round_sizes(runs: int, top: int) -> list[int]:
    """How many runs each level sends in each round: one wave of the highest concurrency
    ``top`` (the last round what is left), so that the levels take turns often and the
    highest one has ``top`` requests in flight in every round but perhaps the last."""
    full, rest = divmod(runs, top)
    return [top] * full + ([rest] if rest else [])


async def _one(client: Any, args: dict[str, Any], seed: int | None) -> Answer:
    raw = await client.chat.completions.with_raw_response.create(
        **args, extra_headers=PROBE_HEADERS
    )
    problem = check_seed(raw.headers.get("X-Seedproxy-Seed"), seed)
    if problem is not None:
        raise SeedMismatch(problem)
    return answer(raw.parse().to_dict())


async def _wave(
    client: Any, args: dict[str, Any], seed: int | None, runs: int, concurrency: int
) -> list[Answer]:
    """``runs`` requests, ``concurrency`` of them in flight at once (fewer at the tail)."""
    answers: list[Answer] = []
    left = runs

    async def worker() -> None:
        nonlocal left
        while left:
            left -= 1
            answers.append(await _one(client, args, seed))

    tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, runs))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return answers


async def run(
    make_client: Callable[[], Any],
    args: dict[str, Any],
    seed: int | None,
    runs: int,
    levels: Sequence[int],
) -> dict[int, list[Answer]]:
    """Send the request ``runs`` times at each concurrency level, live (see
    :data:`proxy.probe.PROBE_HEADERS`), the levels in rounds, each round starting with the
    next level. ``make_client()`` gives an ``openai.AsyncOpenAI``: one per level."""
    answers: dict[int, list[Answer]] = {c: [] for c in levels}
    async with contextlib.AsyncExitStack() as stack:
        clients = {c: await stack.enter_async_context(make_client()) for c in levels}
        for r, size in enumerate(round_sizes(runs, max(levels))):
            for i in range(len(levels)):
                c = levels[(r + i) % len(levels)]
                answers[c] += await _wave(clients[c], args, seed, size, c)
    return answers


def report(
    settings: dict[str, Any], answers: dict[int, list[Answer]], logprobs: bool
) -> tuple[dict[str, Any], list[Level]]:
    """The JSON report and the levels it was made of."""
    levels = [level(c, found, logprobs) for c, found in sorted(answers.items())]
    data = {
        "settings": settings,
        "levels": [v.to_json() for v in levels],
        "load_dependent": load_dependent(levels),
    }
    return data, levels


def as_runs(answers: Sequence[Answer]) -> list[Run]:
    """The answers as runs compared with the first one, as the sequential probe counts them
    into the store's comparisons (``--cache-dir``, ``--config``)."""
    first = answers[0].text
    return [
        Run(
            number,
            a.fingerprint,
            0,
            0,
            a.text,
            a.text == first,
            1.0
            if a.text == first
            else round(difflib.SequenceMatcher(None, first, a.text).ratio(), 4),
        )
        for number, a in enumerate(answers, 1)
    ]


def _spread_text(values: dict[str, float] | None) -> str:
    if values is None:
        return "-"
    return "/".join(f"{values[k]:g}" for k in ("min", "median", "p90"))


def _rate(value: float) -> str:
    return f"{value:.1%}"


def verdict(levels: Sequence[Level]) -> str:
    """The last line: whether the answers depend on load, with the two rates it compared."""
    low, high = min(levels, key=lambda v: v.concurrency), max(levels, key=lambda v: v.concurrency)
    rate = f"identical rate {_rate(low.identical_rate)} at concurrency {low.concurrency}"
    if low is high:
        return f"no load dependence measured: one level only ({rate})"
    rates = f"{rate}, {_rate(high.identical_rate)} at concurrency {high.concurrency}"
    if load_dependent(levels):
        return f"load-dependent: {rates} (95% intervals do not overlap)"
    return f"no load dependence measured: {rates} (95% intervals overlap)"


def text_report(data: dict[str, Any], levels: Sequence[Level]) -> str:
    """The table per level, a note when the levels' most common answers differ, the verdict."""
    tokens = any("divergence_tokens" in v for v in data["levels"])
    headers = [
        "concurrency",
        "runs",
        "unique",
        "mode",
        "identical [95% CI]",
        "fingerprints",
        "diverged at char min/med/p90",
        "word min/med/p90",
    ] + (["token min/med/p90"] if tokens else [])
    rows = []
    for v in data["levels"]:
        rows.append(
            [
                v["concurrency"],
                v["runs"],
                v["unique"],
                v["mode_count"],
                f"{_rate(v['identical_rate'])} [{_rate(v['wilson_low'])}, "
                f"{_rate(v['wilson_high'])}]",
                ", ".join(human.fingerprint(f) for f in v["fingerprints"]),
                _spread_text(v["divergence_chars"]),
                _spread_text(v["divergence_words"]),
            ]
            + ([_spread_text(v.get("divergence_tokens"))] if tokens else [])
        )
    lines = [text_table(headers, rows), ""]
    if len({v.mode for v in levels if v.mode_count > 1}) > 1:  # 1: no answer came twice
        lines.append("the levels' most common answers differ from each other")
    lines.append(verdict(levels))
    return "\n".join(lines)


def histogram(values: Sequence[int], top: int, bins: int = 10) -> list[tuple[int, int, int]]:
    """``values`` (positions from 1 to ``top``) counted in at most ``bins`` equal ranges:
    (first, last, count) per range."""
    width = max(1, -(-top // bins))
    counts = Counter((value - 1) // width for value in values)
    return [(k * width + 1, min(top, (k + 1) * width), counts[k]) for k in range(-(-top // width))]


SIMILARITY_CHARS = 2_000  # compared per answer: SequenceMatcher costs more than linearly


def most_different(v: Level) -> str | None:
    """The distinct answer least similar to the mode, on their first
    :data:`SIMILARITY_CHARS` characters; of equals, the one that diverges first."""
    mode = v.mode[:SIMILARITY_CHARS]

    def distance(text: str) -> tuple[float, int]:
        where = drift.divergence(v.mode, text)
        ratio = difflib.SequenceMatcher(None, mode, text[:SIMILARITY_CHARS]).ratio()
        return ratio, where.chars if where else 0

    return min(v.others, key=distance, default=None)


HEAD = (
    "<style>.bar { display: inline-block; height: .8rem; background: #cf222e; }"
    " td.bars { width: 30rem; }</style>"
)


def html_report(data: dict[str, Any], levels: Sequence[Level]) -> str:
    """One self-contained page: the settings, the table, then per level a histogram of where
    the differing runs first diverged and the most common answer beside the most different
    one. Everything from the request or the model is escaped."""
    top = max((max(v.chars, default=0) for v in levels), default=0)
    parts = [
        settings_table(data["settings"]),
        f"<pre class=output>{escape(text_report(data, levels))}</pre>",
    ]
    for v in levels:
        parts.append(f"<div class=event><h2>Concurrency {v.concurrency}</h2>")
        if v.chars:
            bins = histogram(v.chars, top)
            most = max(count for _, _, count in bins)
            rows = "".join(
                f"<tr><td>{first}&ndash;{last}</td><td>{count}</td><td class=bars>"
                f"<span class=bar style='width:{100 * count / most:.1f}%'></span></td></tr>"
                for first, last, count in bins
            )
            parts.append(
                "<h3>First divergence from the most common answer (character)</h3>"
                f"<table><thead><tr><th>characters</th><th>runs</th><th></th></tr></thead>"
                f"<tbody>{rows}</tbody></table>"
            )
        other = most_different(v)
        if other is None:
            parts.append(f"<p>All {v.runs} answers were identical:</p>")
            parts.append(f"<pre class=output>{escape(v.mode)}</pre>")
        else:
            parts.append(
                diff_table(
                    v.mode.splitlines(),
                    other.splitlines(),
                    f"most common ({v.mode_count} of {v.runs})",
                    "most different",
                )
            )
        parts.append("</div>")
    return page("seedproxy probe: load experiment", "".join(parts), head=HEAD)
