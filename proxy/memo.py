"""What a request's bytes decided, kept for the next identical request. Pure.

A cache hit's own cost was two thirds parsing: strict JSON, the seed policy, the key
rules (ignored fields and paths, redaction, normalization) and SHA-256. All of it is a
function of the settings, which never change in a running proxy, and of what the
request says: its endpoint, query string, namespace (with the credential hash under
``cache.scope = "per-key"``), ``X-Seedproxy-Seed-Mode`` header and body bytes. Those
together are the :data:`Ident`; an identical one gets the same :class:`Parsed`. The
memo is bounded by entries and by what its entries hold once parsed (:func:`held`), and
only holds what parsed without error. Nothing in it is a credential: the namespace
carries a hash of one at most."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .lru import Lru

# (endpoint path, raw query, namespace, seed mode the client chose (None: none), body bytes)
Ident = tuple[str, str, str, str | None, bytes]

ENTRIES = 4096
BUDGET = 32 * 1024 * 1024  # bytes held at most, as :func:`held` counts them
LARGEST = 256 * 1024  # a larger entry is parsed every time: rarely repeated, costly to hold
# What a parse can hold beyond the body's bytes, per container ({ or [) and per item (a
# comma or colon): at least an empty dict and a pointer, a float or a short string.
CONTAINER = 100
ITEM = 60
NODES_ON_LOOP = 4096  # containers and items a body's parse may have to be walked on the loop


@dataclass(frozen=True, slots=True)
class Parsed:
    """The parse of one request: its body with the seed policy applied (shared between
    the requests that sent these bytes, so never changed after parsing), how the seed
    policy changed it, its cache key, model, seed, whether its answer depends on
    server-side state, and its key as made before placeholders carried a digest (when
    that differs: see :class:`~proxy.keys.Keyed`)."""

    body: dict[str, Any]
    seed_edit: str
    key: str
    model: str
    seed: int | None
    stateful: bool
    legacy: str | None = None


def shape(raw: bytes) -> tuple[int, int]:
    """At least how many containers (``{`` or ``[``) and items (a comma or colon) a JSON
    body parses into, counted at C speed without parsing it (a brace in a string counts
    too: an overestimate). What walking the parse costs grows with these, not with bytes:
    60 KB of ``[{},{},...]`` is 40,000 of them."""
    return raw.count(b"{") + raw.count(b"["), raw.count(b",") + raw.count(b":")


def held(ident: Ident, parsed: Parsed) -> int:
    """At least the memory an entry holds, from its bytes alone (no walk of the parse):
    60 KB of ``[{},{},...]`` parse into 1.4 MB of dicts, so raw bytes are no measure. A
    character takes up to 4 bytes in a Python string."""
    raw = ident[4]
    containers, items = shape(raw)
    return 4 * (len(raw) + len(ident[1]) + len(ident[2])) + CONTAINER * containers + ITEM * items


class Memo(Lru[Ident, Parsed]):
    """A bounded least-recently-used map of :data:`Ident` to :class:`Parsed`, sized by
    what its entries hold once parsed."""

    def __init__(self, entries: int = ENTRIES, budget: int = BUDGET, largest: int = LARGEST):
        super().__init__(budget, largest, held, entries)
