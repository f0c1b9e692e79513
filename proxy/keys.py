"""Canonical request -> cache key. Pure: no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

_MAX_EXACT = 2**53


def _normalize(value: Any) -> Any:
    """Make equal JSON values equal in Python: ``1.0`` becomes ``1``; containers recurse."""
    if isinstance(value, float):
        if value.is_integer() and -_MAX_EXACT <= value <= _MAX_EXACT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def canonical_body(body: dict[str, Any], ignore: Iterable[str] = ()) -> bytes:
    """Sorted-key, whitespace-free JSON of ``body`` without the ``ignore`` fields."""
    skip = frozenset(ignore)
    kept = {k: _normalize(v) for k, v in body.items() if k not in skip}
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """A query string whose parameter order does not matter."""
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def cache_key(path: str, query: str, namespace: str, upstream: str, canonical: bytes) -> str:
    """SHA-256 hex over everything that selects an upstream answer."""
    h = hashlib.sha256()
    for part in (path, query, namespace, upstream.rstrip("/")):
        h.update(part.encode())
        h.update(b"\0")
    h.update(canonical)
    return h.hexdigest()
