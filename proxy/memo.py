"""What a request's bytes decided, kept for the next identical request. Pure.

A cache hit's own cost was two thirds parsing: strict JSON, the seed policy, the key
rules (ignored fields and paths, redaction, normalization) and SHA-256. All of it is a
function of the settings, which never change in a running proxy, and of what the
request says: its endpoint, query string, namespace (with the credential hash under
``cache.scope = "per-key"``), ``X-Seedproxy-Seed-Mode`` header and body bytes. Those
together are the :data:`Ident`; an identical one gets the same :class:`Parsed`. The
memo is bounded by entries and by body bytes, and only holds what parsed without error.
Nothing in it is a credential: the namespace carries a hash of one at most."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

# (endpoint path, raw query, namespace, seed-mode header, body bytes)
Ident = tuple[str, str, str, str | None, bytes]

ENTRIES = 4096
BUDGET = 8 * 1024 * 1024  # body bytes held at most (the parsed bodies take a few times more)
LARGEST = 64 * 1024  # a larger body is parsed every time: rarely repeated, costly to hold


@dataclass(frozen=True, slots=True)
class Parsed:
    """The parse of one request: its body with the seed policy applied (shared between
    the requests that sent these bytes, so never changed after parsing), how the seed
    policy changed it, its cache key, model, seed and whether its answer depends on
    server-side state."""

    body: dict[str, Any]
    seed_edit: str
    key: str
    model: str
    seed: int | None
    stateful: bool


class Memo:
    """A bounded least-recently-used map of :data:`Ident` to :class:`Parsed`."""

    def __init__(self, entries: int = ENTRIES, budget: int = BUDGET, largest: int = LARGEST):
        self.entries, self.budget, self.largest = entries, budget, largest
        self._map: OrderedDict[Ident, Parsed] = OrderedDict()
        self.held = 0  # body bytes held

    def __len__(self) -> int:
        return len(self._map)

    def get(self, ident: Ident) -> Parsed | None:
        parsed = self._map.get(ident)
        if parsed is not None:
            self._map.move_to_end(ident)
        return parsed

    def put(self, ident: Ident, parsed: Parsed) -> None:
        size = len(ident[4])
        if size > self.largest or ident in self._map:
            return
        self._map[ident] = parsed
        self.held += size
        while len(self._map) > self.entries or self.held > self.budget:
            old, _ = self._map.popitem(last=False)
            self.held -= len(old[4])
