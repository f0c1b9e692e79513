"""The bounds every store backend keeps alike, in a module of their own so that the Redis
and memory backends read them without loading diskcache and sqlite3."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

MAX_VARIANTS = 8  # fingerprints kept per key; the oldest is dropped beyond this
MAX_EVENTS = 10_000  # per kind
MAX_RECENT = 50  # keys remembered per (endpoint, model) to explain replay misses
# Models whose registry and recent keys are kept: beyond it the least recently noted go,
# so that distinct names (a client may send any) cannot grow the meta store without end.
MAX_MODELS = 1000


def track_models(
    tracked: dict[str, list[str]], noted: Iterable[tuple[str, str]], limit: int
) -> list[tuple[str, list[str]]]:
    """Index each noted (model, endpoint) in ``tracked`` (models least recently noted
    first, each with the endpoints it was noted under), then take out those beyond
    ``limit`` (:data:`MAX_MODELS`): the models, with their endpoints, whose registry and
    recent keys the store drops."""
    for model, endpoint in noted:
        endpoints = tracked.pop(model, [])  # re-inserted: newest last
        tracked[model] = sorted({*endpoints, endpoint})
    oldest = list(itertools.islice(tracked, max(0, len(tracked) - limit)))
    return [(model, tracked.pop(model)) for model in oldest]
