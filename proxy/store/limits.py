"""The bounds every store backend keeps alike, in a module of their own so that the Redis
and memory backends read them without loading diskcache and sqlite3."""

from __future__ import annotations

MAX_VARIANTS = 8  # fingerprints kept per key; the oldest is dropped beyond this
MAX_EVENTS = 10_000  # per kind
MAX_RECENT = 50  # keys remembered per (endpoint, model) to explain replay misses
# Models whose registry and recent keys are kept: beyond it the least recently noted go,
# so that distinct names (a client may send any) cannot grow the meta store without end.
MAX_MODELS = 1000
