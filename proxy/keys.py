"""Canonical request -> cache key: ignored fields and paths, normalization rules,
redaction, repeats. Pure: no I/O."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import strictjson
from .errors import ProxyError
from .patterns import Match, Pattern, compile_str, template
from .redact import Redactor

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


# A JSON path: object fields by name, list items by index, or every item (EVERY, ``[*]``).
Step = str | int | None
EVERY = None
_STEP = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\*|\d+)\]")


def parse_path(text: str) -> tuple[Step, ...]:
    """``messages[*].tool_calls[0].id`` as steps; ValueError saying what is wrong."""
    steps: list[Step] = []
    pos = 0
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None or (m.group(0).startswith(".") and not steps):
            raise ValueError(
                f"bad JSON path {text!r} at character {pos + 1}: use fields and [*] "
                "like messages[*].name"
            )
        name, index = m.groups()
        steps.append(name if name is not None else (EVERY if index == "*" else int(index)))
        pos = m.end()
    if not steps or not isinstance(steps[0], str):
        raise ValueError(f"bad JSON path {text!r}: it must start with a field name")
    return tuple(steps)


def _children(value: Any, step: Step) -> Iterable[tuple[Any, Step]]:
    """(container, step) pairs a step reaches in ``value`` (nothing where it does not fit)."""
    if isinstance(step, str):
        if isinstance(value, dict) and step in value:
            yield value, step
    elif isinstance(value, list):
        if step is EVERY:
            yield from ((value, i) for i in range(len(value)))
        elif -len(value) <= step < len(value):
            yield value, step


def _copy_along(value: Any, steps: tuple[Step, ...], last: Callable[[Any, Step], None]) -> Any:
    """A copy of ``value`` in which ``last(container, step)`` ran at every place the path
    ends; only the containers on the way are copied, so the client's body stays as it is."""
    if not steps:
        return value
    copied: Any = (
        dict(value)
        if isinstance(value, dict)
        else list(value)
        if isinstance(value, list)
        else value
    )
    places = list(_children(copied, steps[0]))
    if len(steps) == 1:
        for container, step in reversed(places):  # reversed: deleting keeps indices valid
            last(container, step)
    else:
        for container, step in places:
            container[step] = _copy_along(container[step], steps[1:], last)
    return copied


def drop_path(body: Any, steps: tuple[Step, ...]) -> Any:
    """``body`` without what ``steps`` reaches (a list item is removed from its list)."""

    def delete(container: Any, step: Step) -> None:
        del container[step]

    return _copy_along(body, steps, delete)


@dataclass(frozen=True)
class Rewrite:
    """A ``[[cache.normalize]]`` table: ``pattern`` (RE2 syntax: it runs on what clients
    send) replaced by ``replace`` (``\\1`` or ``\\g<name>`` for a group) in string values,
    all of them or those under ``paths``."""

    pattern: Pattern[str]
    replace: str
    expand: Callable[[Match[str]], str] = field(compare=False, repr=False)  # ``replace``, compiled
    paths: tuple[tuple[Step, ...], ...] = ()

    @classmethod
    def parse(cls, table: Any) -> Rewrite:
        """A checked rule from its TOML table; ValueError naming what is wrong."""
        if not isinstance(table, dict):
            raise ValueError("expected a table with pattern, replace and optional paths")
        unknown = sorted(set(table) - {"pattern", "replace", "paths"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (pattern, replace, paths)")
        pattern, replace, paths = (
            table.get("pattern"),
            table.get("replace", ""),
            table.get("paths", []),
        )
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(".pattern: expected a regular expression")
        if not isinstance(replace, str):
            raise ValueError(".replace: expected a string")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValueError(".paths: expected a list of JSON paths")
        try:
            compiled = compile_str(pattern)
        except ValueError as exc:
            raise ValueError(f".pattern: {pattern!r} is {exc}") from None
        try:
            expand = template(replace, compiled)
        except ValueError as exc:
            raise ValueError(f".replace: {replace!r}: {exc}") from None
        return cls(compiled, replace, expand, tuple(parse_path(p) for p in paths))

    def apply(self, body: Any) -> Any:
        if not self.paths:
            return self._strings(body)

        def rewrite(container: Any, step: Step) -> None:
            container[step] = self._strings(container[step])

        for steps in self.paths:
            body = _copy_along(body, steps, rewrite)
        return body

    def _strings(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.pattern.sub(self.expand, value)
        if isinstance(value, list):
            return [self._strings(v) for v in value]
        if isinstance(value, dict):
            return {k: self._strings(v) for k, v in value.items()}
        return value


@dataclass(frozen=True)
class KeyRules:
    """What is taken out of or rewritten in a body before it is hashed, in this order:
    ``ignore_fields``, ``ignore_paths``, ``normalize``, redaction. Redaction also runs
    before the rules, so that no rule can break a secret apart and hide it: the key of a
    body and of its redacted form (what a cassette holds) are then always the same."""

    ignore_fields: tuple[str, ...] = ()
    ignore_paths: tuple[tuple[Step, ...], ...] = ()
    normalize: tuple[Rewrite, ...] = ()
    redactor: Redactor = field(default_factory=lambda: Redactor(builtin=False))

    def shape(self, body: dict[str, Any], raw: bytes | None = None) -> Any:
        """The body as it is hashed; ``raw`` (the client's bytes), when given, lets a body
        with no secret in it skip the redaction walk."""
        skip = frozenset(self.ignore_fields)
        shaped: Any = {k: v for k, v in body.items() if k not in skip}
        for steps in self.ignore_paths:
            shaped = drop_path(shaped, steps)
        redact = self.redactor.active and (raw is None or self.redactor.might(raw))
        if redact and self.normalize:
            shaped = self.redactor.value(shaped)
        for rule in self.normalize:
            shaped = rule.apply(shaped)
        return self.redactor.value(shaped) if redact else shaped

    def canonical(self, body: dict[str, Any], raw: bytes | None = None) -> bytes:
        return canonical_body(self.shape(body, raw))


def show_path(steps: tuple[Step, ...]) -> str:
    """Steps written back as a path (``messages[*].name``)."""
    out = ""
    for step in steps:
        if isinstance(step, str):
            out += f".{step}" if out else step
        else:
            out += "[*]" if step is EVERY else f"[{step}]"
    return out


def occurrence_key(key: str, n: int) -> str:
    """The key of the n-th repeat (from 0) of a request (``cache.repeat = "sequence"``):
    the first keeps the request's key, so recordings made without repeats still serve."""
    return key if n == 0 else hashlib.sha256(f"{key}#{n}".encode()).hexdigest()


def canonical_query(raw: str) -> str:
    """The query string as sent, its parameters in order of name: the order of different
    names does not matter, but encoding (``a=1%26b%3D2`` is one parameter) and the order
    of a repeated name do, as they may to the upstream, which receives the raw string."""
    pairs = [pair for pair in raw.split("&") if pair]
    return "&".join(sorted(pairs, key=lambda pair: pair.partition("=")[0]))


def cache_key(path: str, query: str, namespace: str, upstream: str, canonical: bytes) -> str:
    """SHA-256 hex over everything that selects an upstream answer."""
    head = f"{path}\0{query}\0{namespace}\0{upstream.rstrip('/')}\0".encode()
    return hashlib.sha256(head + canonical).hexdigest()


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
    rules: KeyRules,
) -> dict[str, Any]:
    """Everything that goes into a request's key (the canonical form after the ignore,
    normalize and redaction rules), and the key."""
    ignore = rules.ignore_fields
    canonical = rules.canonical(body)
    return {
        "path": path,
        "query": query,
        "namespace": namespace,
        "upstream": upstream.rstrip("/"),
        "ignored_fields": sorted(f for f in ignore if f in body),
        "configured_ignore_fields": list(ignore),
        "ignore_paths": [show_path(p) for p in rules.ignore_paths],
        "normalize_rules": len(rules.normalize),
        "canonical": canonical.decode(),
        "key": cache_key(path, query, namespace, upstream, canonical),
    }


def nearest(
    body: dict[str, Any], recorded: Iterable[tuple[str, dict[str, Any]]], rules: KeyRules
) -> tuple[str, list[str]] | None:
    """The recorded (key, body) whose canonical body differs from ``body`` in the fewest
    fields, with those fields; None if nothing was recorded."""
    mine = rules.shape(body)
    best: tuple[str, list[str]] | None = None
    for key, other in recorded:
        diff = field_diff(mine, rules.shape(other), limit=50)
        if best is None or len(diff) < len(best[1]):
            best = (key, diff)
    return best


def value_at(body: Any, path: str) -> tuple[bool, Any]:
    """Whether ``body`` has a value at a :func:`field_diff` path (``messages[1].content``),
    and that value: for showing what was recorded and what was sent."""
    if path == "(body)":
        return True, body
    try:
        steps = parse_path(path)
    except ValueError:  # a field name no path can spell
        return False, None
    at = body
    for step in steps:
        reached = next(iter(_children(at, step)), None)  # field_diff paths have no [*]
        if reached is None:
            return False, None
        at = reached[0][reached[1]]
    return True, at
