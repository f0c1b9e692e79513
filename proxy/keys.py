"""Canonical request -> cache key. Pure: no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

from . import strictjson
from .errors import ProxyError

_MAX_EXACT = 2**53
MAX_DEPTH = 254  # what orjson can encode


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
    try:
        kept = {k: _normalize(v) for k, v in body.items() if k not in skip}
        return strictjson.dumps(kept, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, RecursionError):
        raise ProxyError(
            400,
            f"The request body is nested more than {MAX_DEPTH} levels deep.",
            code="invalid_json",
        ) from None


def canonical_query(raw: str) -> str:
    """The query string as sent, its parameters in order of name: the order of different
    names does not matter, but encoding (``a=1%26b%3D2`` is one parameter) and the order
    of a repeated name do, as they may to the upstream, which receives the raw string."""
    pairs = [pair for pair in raw.split("&") if pair]
    return "&".join(sorted(pairs, key=lambda pair: pair.partition("=")[0]))


def cache_key(path: str, query: str, namespace: str, upstream: str, canonical: bytes) -> str:
    """SHA-256 hex over everything that selects an upstream answer."""
    h = hashlib.sha256()
    for part in (path, query, namespace, upstream.rstrip("/")):
        h.update(part.encode())
        h.update(b"\0")
    h.update(canonical)
    return h.hexdigest()


def field_diff(a: Any, b: Any, path: str = "", limit: int = 10) -> list[str]:
    """Paths (``messages[1].content``) where two JSON values differ, at most ``limit``."""
    a, b = _normalize(a), _normalize(b)
    out: list[str] = []

    def walk(x: Any, y: Any, at: str) -> None:
        if len(out) >= limit or x == y:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(x.keys() | y.keys()):
                walk(x.get(k, _ABSENT), y.get(k, _ABSENT), f"{at}.{k}" if at else k)
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{at}[{i}]")
        else:
            out.append(at or "(body)")

    walk(a, b, path)
    return out


_ABSENT = object()


def explain(
    path: str,
    query: str,
    namespace: str,
    upstream: str,
    body: dict[str, Any],
    ignore: Iterable[str],
) -> dict[str, Any]:
    """Everything that goes into a request's key, and the key."""
    canonical = canonical_body(body, ignore)
    return {
        "path": path,
        "query": query,
        "namespace": namespace,
        "upstream": upstream.rstrip("/"),
        "ignored_fields": sorted(f for f in ignore if f in body),
        "configured_ignore_fields": list(ignore),
        "canonical": canonical.decode(),
        "key": cache_key(path, query, namespace, upstream, canonical),
    }


def nearest(
    body: dict[str, Any], recorded: Iterable[tuple[str, dict[str, Any]]], ignore: Iterable[str]
) -> tuple[str, list[str]] | None:
    """The recorded (key, body) whose canonical body differs from ``body`` in the fewest
    fields, with those fields; None if nothing was recorded."""
    skip = frozenset(ignore)
    mine = {k: v for k, v in body.items() if k not in skip}
    best: tuple[str, list[str]] | None = None
    for key, other in recorded:
        diff = field_diff(mine, {k: v for k, v in other.items() if k not in skip}, limit=50)
        if best is None or len(diff) < len(best[1]):
            best = (key, diff)
    return best
