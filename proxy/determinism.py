"""How deterministic a model is, measured from every live-vs-stored comparison. Pure.

Comparisons are counted through the stores' shared counters (summed across processes and
replicas, flushed once a second), so this needs nothing new from a backend. A counter's
name carries what it counts::

    cmp:[hour, source, endpoint, model, stored fingerprint, live fingerprint, measure]

the list JSON-encoded (ASCII only), so any character in a model or fingerprint name, and a
``null`` fingerprint, survive a round trip. ``measure`` is ``identical``, ``differed`` or
``similarity`` (the summed similarity of differing answers, in millionths: counters are
integers) or ``diverged_at:<position>``: how many differing answers first diverged at a
character position in the bucket that starts at ``<position>`` (see
:func:`position_bucket`). ``source`` is ``traffic`` (the proxy, under the operator's seed
policy), ``probe`` (``seedproxy probe``) or ``client`` (a request that chose its own seed
policy with ``X-Seedproxy-Seed-Mode``): only traffic is gated (``--fail-under``) and
exported as a metric, so no client can move another's gate."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .human import fingerprint as shown_fingerprint
from .policy import Sighting

PREFIX: Final = "cmp:"
HOUR: Final = 3600
MICRO: Final = 1_000_000
Z95: Final = 1.959963984540054  # the normal quantile of a two-sided 95% interval
SOURCES: Final = ("traffic", "probe", "client")
MEASURES: Final = ("identical", "differed", "similarity")
DIVERGED_AT: Final = "diverged_at:"
EXACT_POSITIONS: Final = 32  # first-divergence positions up to this are counted one by one
STEPS_PER_DOUBLING: Final = 8  # past it, buckets are each at most 2 ** (1 / 8) - 1 = 9% wide


@dataclass(frozen=True, slots=True)
class Cell:
    """What one counter is about: a time bucket and who compared what with what."""

    hour: int  # the start of the hour, epoch seconds
    source: str
    endpoint: str
    model: str
    stored: str | None
    live: str | None


def counter_name(cell: Cell, measure: str) -> str:
    return PREFIX + json.dumps(
        [cell.hour, cell.source, cell.endpoint, cell.model, cell.stored, cell.live, measure],
        separators=(",", ":"),
    )


def position_bucket(chars: int) -> int:
    """The first position of the bucket a first-divergence position is counted in: each
    position up to :data:`EXACT_POSITIONS` on its own, then :data:`STEPS_PER_DOUBLING`
    buckets per doubling. So a cell holds at most a few hundred counters whatever the
    answers' length, and a median read from them is exact below 33 characters and at most
    9% low above."""
    if chars <= EXACT_POSITIONS:
        return max(chars, 1)
    step = math.floor(STEPS_PER_DOUBLING * math.log2(chars))
    return max(EXACT_POSITIONS + 1, math.ceil(2 ** (step / STEPS_PER_DOUBLING)))


def _position(measure: str) -> int | None:
    """The bucket a ``diverged_at:`` measure counts, if it is one."""
    if not measure.startswith(DIVERGED_AT):
        return None
    digits = measure[len(DIVERGED_AT) :]
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 12:
        return None
    position = int(digits)
    return position if position >= 1 and position_bucket(position) == position else None


def parse_name(name: str) -> tuple[Cell, str] | None:
    """The cell and measure a counter name encodes; None for any other counter."""
    if not name.startswith(PREFIX):
        return None
    try:
        parts = json.loads(name[len(PREFIX) :])
    except ValueError:
        return None
    if not (isinstance(parts, list) and len(parts) == 7):
        return None
    hour, source, endpoint, model, stored, live, measure = parts
    if (
        not isinstance(hour, int)
        or source not in SOURCES
        or not isinstance(endpoint, str)
        or not isinstance(model, str)
        or not all(fp is None or isinstance(fp, str) for fp in (stored, live))
        or not isinstance(measure, str)
        or (measure not in MEASURES and _position(measure) is None)
    ):
        return None
    return Cell(hour, source, endpoint, model, stored, live), measure


def counts(
    when: float,
    endpoint: str,
    model: str,
    stored: str | None,
    live: str | None,
    similarity: float | None,
    source: str = "traffic",
    divergence_chars: int | None = None,
) -> dict[str, int]:
    """The counter increments of one comparison; ``similarity`` None means identical;
    ``divergence_chars`` is where differing outputs first differ, if known."""
    cell = Cell(int(when // HOUR) * HOUR, source, endpoint, model, stored, live)
    if similarity is None:
        return {counter_name(cell, "identical"): 1}
    out = {
        counter_name(cell, "differed"): 1,
        counter_name(cell, "similarity"): round(similarity * MICRO),
    }
    if divergence_chars is not None:
        out[counter_name(cell, DIVERGED_AT + str(position_bucket(divergence_chars)))] = 1
    return out


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: unlike p ± z·se it stays within [0, 1]
    and is honest at 0/n and n/n, which is where determinism rates live."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - margin), min(1.0, centre + margin)


@dataclass(slots=True)
class Tally:
    compared: int = 0
    identical: int = 0
    similarity_micro: int = 0  # summed over the differing answers
    # first-divergence position bucket (see position_bucket) -> differing answers in it
    positions: dict[int, int] = field(default_factory=dict)

    def add(self, measure: str, value: int) -> None:
        if measure == "identical":
            self.compared += value
            self.identical += value
        elif measure == "differed":
            self.compared += value
        elif measure == "similarity":
            self.similarity_micro += value
        elif (position := _position(measure)) is not None:
            self.positions[position] = self.positions.get(position, 0) + value

    def merge(self, other: Tally) -> None:
        self.compared += other.compared
        self.identical += other.identical
        self.similarity_micro += other.similarity_micro
        for position, n in other.positions.items():
            self.positions[position] = self.positions.get(position, 0) + n

    def median_position(self) -> int | None:
        """The (lower) median first-divergence position, as its bucket's first position."""
        remaining = (sum(self.positions.values()) + 1) // 2
        for position in sorted(self.positions):
            remaining -= self.positions[position]
            if remaining <= 0:
                return position
        return None

    def to_dict(self) -> dict[str, Any]:
        """``compared``, ``identical``, ``rate`` with its 95% Wilson interval, and the mean
        similarity of the differing answers; a value with nothing to measure is None."""
        differed = self.compared - self.identical
        low, high = wilson(self.identical, self.compared) if self.compared else (None, None)
        return {
            "compared": self.compared,
            "identical": self.identical,
            "differed": differed,
            "rate": round(self.identical / self.compared, 4) if self.compared else None,
            "wilson_low": None if low is None else round(low, 4),
            "wilson_high": None if high is None else round(high, 4),
            "mean_similarity": round(self.similarity_micro / MICRO / differed, 4)
            if differed
            else None,
            "median_divergence_chars": self.median_position(),
        }


Pair = tuple[str, str, str | None, str | None]  # (source, model, stored, live)


def tallies(
    counters: Mapping[str, int], since: float | None = None, model: str | None = None
) -> dict[Pair, Tally]:
    """Comparison counts per (source, model, stored fingerprint, live fingerprint), over
    every endpoint, from the hour that holds ``since`` on."""
    out: dict[Pair, Tally] = {}
    for name, value in counters.items():
        parsed = parse_name(name)
        if parsed is None:
            continue
        cell, measure = parsed
        if (model is not None and cell.model != model) or (
            since is not None and cell.hour + HOUR <= since
        ):
            continue
        pair = (cell.source, cell.model, cell.stored, cell.live)
        out.setdefault(pair, Tally()).add(measure, value)
    return out


def report(
    counts_by_pair: Mapping[Pair, Tally],
    sightings: Mapping[str, Mapping[str | None, Sighting]],
) -> list[dict[str, Any]]:
    """Per (model, source): the same-fingerprint totals, the cross-fingerprint totals,
    each fingerprint's own counts with when it was first and last seen live, and each
    pair of fingerprints compared across a change. Sorted by model, traffic first."""
    groups: dict[tuple[str, str], dict[Pair, Tally]] = {}
    for pair, tally in counts_by_pair.items():
        groups.setdefault((pair[1], pair[0]), {})[pair] = tally
    rows = []
    for (model, source), pairs in sorted(
        groups.items(), key=lambda g: (g[0][0], SOURCES.index(g[0][1]))
    ):
        same, cross = Tally(), Tally()
        per_fp: dict[str | None, Tally] = {}
        changes = []
        for (_, _, stored, live), tally in sorted(pairs.items(), key=lambda p: _fp_order(p[0])):
            if stored == live:
                same.merge(tally)
                per_fp.setdefault(live, Tally()).merge(tally)
            else:
                cross.merge(tally)
                changes.append({"from": stored, "to": live, **tally.to_dict()})
        seen = sightings.get(model, {})
        fingerprints = []
        for fp, tally in per_fp.items():
            sighting = seen.get(fp)
            fingerprints.append(
                {
                    "fingerprint": fp,
                    **tally.to_dict(),
                    "first_seen": sighting.first_seen if sighting else None,
                    "last_seen": sighting.last_seen if sighting else None,
                }
            )
        rows.append(
            {
                "model": model,
                "source": source,
                **same.to_dict(),
                "cross_fingerprint": cross.to_dict(),
                "fingerprints": fingerprints,
                "changes": changes,
            }
        )
    return rows


def _fp_order(pair: Pair) -> tuple[str, str]:
    return shown_fingerprint(pair[2]), shown_fingerprint(pair[3])


def failing(rows: Iterable[Mapping[str, Any]], rate: float, min_compared: int) -> list[str]:
    """Models whose same-fingerprint rate on real traffic, over at least ``min_compared``
    comparisons, is below ``rate`` (probes are experiments, not a gate)."""
    return [
        row["model"]
        for row in rows
        if row["source"] == "traffic"
        and row["compared"] >= max(1, min_compared)
        and row["identical"] / row["compared"] < rate
    ]


def metric_samples(counters: Mapping[str, int]) -> dict[tuple[str, str, str], int]:
    """``seedproxy_comparisons_total`` samples of real traffic by (model, fingerprint,
    result). A comparison across a fingerprint change is labelled ``stored->live``, so
    that a plain fingerprint's rate is a same-fingerprint rate."""
    out: dict[tuple[str, str, str], int] = {}
    for name, value in counters.items():
        parsed = parse_name(name)
        if (
            parsed is None
            or parsed[1] not in ("identical", "differed")
            or parsed[0].source != "traffic"
        ):
            continue
        cell, measure = parsed
        fingerprint = shown_fingerprint(cell.live)
        if cell.stored != cell.live:
            fingerprint = f"{shown_fingerprint(cell.stored)}->{fingerprint}"
        label = (cell.model, fingerprint, measure)
        out[label] = out.get(label, 0) + value
    return out
