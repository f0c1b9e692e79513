"""Canonical request -> cache key: the seed policy, ignored fields and paths,
normalization rules, redaction (of the body and of credentials in the query), repeats.
:class:`Keyer` is the one place a key is made: parsing a live request, loading and writing
cassettes, the replay miss's nearest recording, ``/_seedproxy/explain`` and
``seedproxy key`` all call it. Pure: no I/O."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import quote, unquote_plus

import orjson

from . import strictjson
from .errors import ProxyError
from .patterns import Match, Pattern, compile_str, template
from .policy import apply_seed
from .redact import Redactor, disarmed, is_placeholder, placeholder

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

    def shape(self, body: dict[str, Any], raw: bytes | None = None, live: bool = False) -> Any:
        """The body as it is hashed; ``raw`` (the client's bytes), when given, lets a body
        with no secret in it skip the redaction walk. ``live``: a client's body as it
        arrives, whose literal placeholders are made placeholders of their own first
        (see :class:`~proxy.redact.Redactor`); else a stored one, kept as it is."""
        return self.shaped(body, raw, live=live)[0]

    def shaped(
        self,
        body: dict[str, Any],
        raw: bytes | None = None,
        redactor: Redactor | None = None,
        live: bool = False,
    ) -> tuple[Any, bool]:
        """:meth:`shape` with ``redactor`` (else the rules' own), and whether redaction
        changed anything (only then can another placeholder form give another key)."""
        redactor = redactor or self.redactor
        skip = frozenset(self.ignore_fields)
        shaped: Any = {k: v for k, v in body.items() if k not in skip}
        for steps in self.ignore_paths:
            shaped = drop_path(shaped, steps)
        if not (redactor.active and (raw is None or redactor.might(raw, live))):
            for rule in self.normalize:
                shaped = rule.apply(shaped)
            return shaped, False
        before = shaped
        if self.normalize:  # the literals are the client's: only before the rules
            shaped = redactor.value(shaped, live)
        changed = shaped is not before
        for rule in self.normalize:
            shaped = rule.apply(shaped)
        redacted = redactor.value(shaped, live and not self.normalize)
        return redacted, changed or redacted is not shaped

    def canonical(
        self, body: dict[str, Any], raw: bytes | None = None, live: bool = False
    ) -> bytes:
        return canonical_body(self.shape(body, raw, live))


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


# Query parameters whose value is a credential, by their name in lower case.
QUERY_CREDENTIALS = frozenset(
    {
        "api_key",
        "api-key",
        "apikey",
        "key",
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "client_secret",
        "password",
        "secret",
        "sig",
        "signature",
        "code",
    }
)
QUERY_CREDENTIAL = "query_credential"  # the redaction kind of such a value


def _credential(name: str, value: str) -> bool:
    """Whether a query parameter carries a credential by its name (and is not redacted)."""
    return (
        bool(value)
        and not is_placeholder(value)
        and (unquote_plus(name).strip().lower() in QUERY_CREDENTIALS)
    )


def query_credentials(query: str) -> Iterator[str]:
    """The values of the credential parameters in ``query`` that are not redacted."""
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if _credential(name, value):
            yield value


def redact_query(query: str, redactor: Redactor, live: bool = False) -> str:
    """``query`` with each credential parameter's value (:data:`QUERY_CREDENTIALS`) and
    each secret a detector finds in a value replaced by a placeholder carrying a digest of
    what it replaced, so two tokens still give two keys; the same string when nothing
    changed. Placeholders are left as they are, so redacting twice changes nothing; in a
    ``live`` query (a client's) a value that only looks like one is first made a
    placeholder of its own, as in a body (see :class:`~proxy.redact.Redactor`)."""
    if not query:
        return query
    pairs = query.split("&")
    changed = False
    for i, pair in enumerate(pairs):
        name, _, value = pair.partition("=")
        if live and value:  # credentials are redacted with the detectors off too
            text = unquote_plus(value)
            if (own := disarmed(text)) != text:
                value = quote(own, safe="[]:")
                pairs[i] = f"{name}={value}"
                changed = True
        if _credential(name, value):
            pairs[i] = f"{name}={placeholder(QUERY_CREDENTIAL, value)}"
            changed = True
        elif value and redactor.active:
            text = unquote_plus(value)
            redacted = redactor.text(text)
            if redacted != text:
                pairs[i] = f"{name}={quote(redacted, safe='[]:')}"
                changed = True
    return "&".join(pairs) if changed else query


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


class Where(NamedTuple):
    """What besides its body selects a request's answer: the endpoint path, the query
    string as sent, the namespace (with the credential hash under per-key scope) and the
    seed mode the request asked for (``X-Seedproxy-Seed-Mode``; None: ``seed.mode``)."""

    path: str
    query: str = ""
    namespace: str = ""
    seed_mode: str | None = None


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


@dataclass(frozen=True, slots=True)
class Keyed:
    """A request's key and what went into it. ``seed_edit`` says how the seed policy
    changed the body ("" not at all, "added", "replaced"); ``query`` is the canonical
    query, credentials redacted (what a cassette shows). ``legacy`` is the key the
    request had before placeholders carried a digest and query credentials were
    redacted, when that differs (only for a body or query with a secret in it): entries
    and cassettes recorded then are found under it."""

    key: str
    seed: int | None
    seed_edit: str
    seed_mode: str
    query: str
    canonical: bytes
    legacy: str | None = None


@dataclass(frozen=True)
class Keyer:
    """THE key function, built once from the settings that change a key: the seed policy
    (``seed.mode``, ``seed.default``), the key rules (``cache.ignore_fields``,
    ``ignore_paths``, ``normalize``, redaction), the upstream base URL and
    ``cache.repeat``. Every key in seedproxy comes from :meth:`key` (and
    :meth:`occurrence` for repeats), so a change to how keys are made is made here once.

    Each call says whether its request is ``live`` (a client's, as it arrives: parsing,
    explain, ``seedproxy key``, the query ``seedproxy run`` writes) or stored (a cassette
    or import being loaded, a recording compared with the request that missed): text in
    a live request that only looks like a placeholder is made a placeholder of its own
    before redaction, so it never shares a key with the secret the placeholder names,
    while a stored request keeps its placeholders and so its live key."""

    rules: KeyRules
    upstream: str
    seed_mode: str = "force"
    seed_default: int = 12345
    sequence: bool = False

    def key(
        self,
        where: Where,
        seeded: bool,
        body: dict[str, Any],
        raw: bytes | None = None,
        *,
        live: bool,
    ) -> Keyed:
        """The key of ``body`` sent to ``where``, after the seed policy (applied to
        ``body`` in place when the endpoint is ``seeded``: the body then is what goes
        upstream); ``live`` or stored, see above. ``raw``, the client's bytes, lets a body
        without a secret skip the redaction walk. A bad seed is the client's 400."""
        mode = where.seed_mode or self.seed_mode
        seed, edit = None, ""
        if seeded:
            before = body.get("seed", _ABSENT)
            seed = apply_seed(body, mode, self.seed_default)
            if body.get("seed", _ABSENT) is not before:
                edit = "added" if before is _ABSENT else "replaced"
        plain = canonical_query(where.query)
        query = redact_query(plain, self.rules.redactor, live)
        shaped, redacted = self.rules.shaped(body, raw, live=live)
        canonical = canonical_body(shaped)
        key = cache_key(where.path, query, where.namespace, self.upstream, canonical)
        legacy = None
        if redacted or query is not plain:  # a secret: it was keyed another way before
            old = canonical_body(self.rules.shaped(body, raw, self._legacy, live)[0])
            legacy = cache_key(where.path, plain, where.namespace, self.upstream, old)
        return Keyed(key, seed, edit, mode, query, canonical, legacy if legacy != key else None)

    @functools.cached_property
    def _legacy(self) -> Redactor:
        return self.rules.redactor.legacy_form()

    def query(self, raw: str, *, live: bool) -> str:
        """The query string as keyed and written: canonical, credentials redacted."""
        return redact_query(canonical_query(raw), self.rules.redactor, live)

    def occurrence(self, key: str, n: int) -> str:
        """The key of the n-th repeat (from 0) of the request with ``key``; n stays 0
        unless repeats are counted (``cache.repeat = "sequence"``, or a request its kind
        records per occurrence)."""
        return occurrence_key(key, n)

    def explain(self, where: Where, seeded: bool, body: dict[str, Any]) -> dict[str, Any]:
        """Everything that goes into a request's key (the canonical form after the seed
        policy, ignore, normalize and redaction rules), and the key, of a request as a
        client would send it (live)."""
        ignore = self.rules.ignore_fields
        keyed = self.key(where, seeded, body, live=True)
        ignored = sorted(f for f in ignore if f in body)
        return {
            "path": where.path,
            "query": keyed.query,
            "namespace": where.namespace,
            "upstream": self.upstream.rstrip("/"),
            "ignored_fields": ignored,
            "configured_ignore_fields": list(ignore),
            "ignore_paths": [show_path(p) for p in self.rules.ignore_paths],
            "normalize_rules": len(self.rules.normalize),
            "canonical": keyed.canonical.decode(),
            "key": keyed.key,
            "seed": keyed.seed,
            "seed_mode": keyed.seed_mode if seeded else None,
        }

    def nearest(
        self, body: dict[str, Any], recorded: Sequence[tuple[str, dict[str, Any]]]
    ) -> tuple[str, list[str]] | None:
        """The recorded (key, body as sent upstream) whose canonical form differs from
        ``body``'s (the live request's, also as sent upstream) in the fewest fields, with
        those fields; None if nothing was recorded (``body`` then is not shaped: redacting
        a large body costs its size)."""
        if not recorded:
            return None
        mine = self.rules.shape(body, live=True)
        best: tuple[str, list[str]] | None = None
        for key, other in recorded:
            diff = field_diff(mine, self.rules.shape(other), limit=50)
            if best is None or len(diff) < len(best[1]):
                best = (key, diff)
        return best
