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

from dataclasses import dataclass
from typing import Any

from .lru import Lru

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


def _body_size(ident: Ident, parsed: Parsed) -> int:
    return len(ident[4])


class Memo(Lru[Ident, Parsed]):
    """A bounded least-recently-used map of :data:`Ident` to :class:`Parsed`, sized by
    body bytes."""

    def __init__(self, entries: int = ENTRIES, budget: int = BUDGET, largest: int = LARGEST):
        super().__init__(budget, largest, _body_size, entries)
