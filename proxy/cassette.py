"""Cassettes: recordings in one file a reviewer can read, to commit and replay in CI.

A cassette is pretty JSON (2-space indent, a final newline)::

    {"version": 2, "interactions": [
      {"endpoint": "/v1/chat/completions", "model": ..., "fingerprint": ...,
       "recorded_at": "2026-01-31T12:00:00.000000Z",
       "request": {...the body as sent upstream...},
       "response": {"status": 200, "content_type": "application/json", "body": {...},
                    "events": [{"event": "response.created", "data": {...}}, ...]}}]}

``events`` (the Responses API's recorded stream) only when kept; ``query``, ``namespace``
and ``seed_mode`` (``X-Seedproxy-Seed-Mode``'s) only when the request had them.
Interactions are in recording order and each object keeps its key order, so writing what
was read gives the same bytes: replaying never rewrites a file. Entries never hold request
headers, and credentials in a query are redacted, so no credential can reach a cassette.

Keys are never taken from the file but computed again on load (:class:`~proxy.keys.Keyer`),
from the request it shows and the current settings (seed policy, ``cache.ignore_fields``,
ignore paths, normalize rules, redaction, upstream URL), so a cassette survives a change
of either and answers exactly the request a reviewer reads: a stated ``key`` that
disagrees, a value that could not be served (a status outside 200-299, a content type with
a line break, a body that is not an object, a time that is not finite...) or two answers
to one request fail the load naming the file, the interaction and the field. With
``cache.repeat = "sequence"`` (and for Responses requests naming a ``conversation``) the
n-th interaction with the same request gets the n-th repeat's key, so the order of the
interactions is the order of the answers.

A file named ``*.jsonl`` holds the same interactions as JSON Lines, one a line, for tools
that stream records; JSON Lines exports of version 1 (one entry per line) are still read,
keys and all."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .call import endpoint_for
from .config import Settings
from .errors import ProxyError
from .keys import Where
from .kinds import scrubbed
from .policy import SEED_MODES
from .redact import Redactor
from .repeats import Occurrences
from .sse import iter_events, parse_event
from .store import Entry

VERSION = 2


class CassetteError(ValueError):
    """A file that is not a cassette; the message says where and why."""


class Recording(NamedTuple):
    """An entry of a cassette with what its key was computed from besides the request."""

    entry: Entry
    query: str = ""
    namespace: str = ""
    seed_mode: str | None = None  # X-Seedproxy-Seed-Mode's, when the request sent one

    @property
    def where(self) -> tuple[str, str, str | None]:
        """(query, namespace, seed mode): what :func:`interaction` takes to show it."""
        return self.query, self.namespace, self.seed_mode


def key_for(
    endpoint: str,
    request: dict[str, Any],
    query: str,
    namespace: str,
    settings: Settings,
    seed_mode: str | None = None,
) -> str:
    """The key the proxy computes for ``request`` (the body as sent upstream), through the
    one key function: the seed policy (the request's own ``seed_mode``, else
    ``seed.mode``) applies as it does to a client's body, so a seed the policy would add
    matches, and a recording made with another mode keeps its key."""
    target = endpoint_for(endpoint)
    where = Where(target.path, query, namespace, seed_mode)
    return settings.keyer.key(where, target.seeded, dict(request), live=False).key


def _time(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _events(stream: bytes) -> list[dict[str, Any]]:
    """Raw SSE bytes as a list: ``{"event": name, "data": JSON}``, or ``"text"`` for data
    that is not JSON. An event without data (a ``: keep-alive`` comment) is one no client
    is given, so it is left out: written as ``{}`` it made the file fail to load."""
    out = []
    for raw in iter_events(stream):
        name, data = parse_event(raw)
        if data is None:
            continue
        item: dict[str, Any] = {} if name is None else {"event": name}
        try:
            item["data"] = orjson.loads(data)
        except orjson.JSONDecodeError:
            item["text"] = data.decode("utf-8", "replace")
        out.append(item)
    return out


def _stream(events: list[dict[str, Any]]) -> bytes:
    parts = []
    for item in events:
        head = f"event: {item['event']}\n".encode() if "event" in item else b""
        data = orjson.dumps(item["data"]) if "data" in item else str(item["text"]).encode()
        parts.append(head + b"data: " + data + b"\n\n")
    return b"".join(parts)


class Repeats:
    """Which repeat of its request each interaction is, counted in file order, on writing
    as on loading (``cache.repeat = "sequence"``, and a request its kind counts per
    occurrence, see :meth:`~proxy.kinds.Kind.per_occurrence`; else each is the first)."""

    def __init__(self, settings: Settings) -> None:
        self.keyer = settings.keyer
        # exact, not forgetting: a file's distinct requests are at most its interactions
        self.seen = Occurrences(self.keyer.sequence, limit=sys.maxsize)
        self.shown: set[tuple[str, str | None]] = set()  # (key, fingerprint) written
        self.rekeyed = 0  # entries written whose key the file's request does not give

    def key(self, base: str, counted: bool = False) -> str:
        """The key of the next interaction whose request has key ``base`` (``counted``:
        one its kind records per occurrence whatever ``cache.repeat`` says)."""
        return self.keyer.occurrence(base, self.seen.next(base, counted))

    def expected(self, base: str) -> str:
        """The key :meth:`key` would give, without counting it."""
        return self.keyer.occurrence(base, self.seen.peek(base))


def interaction(
    entry: Entry,
    settings: Settings,
    query: str = "",
    namespace: str = "",
    seed_mode: str | None = None,
    repeats: Repeats | None = None,
) -> dict[str, Any] | None:
    """One entry as a cassette's interaction: the request that selects its answer, whose
    key is computed again on load. An entry recorded under other settings (another
    upstream, namespace, query or seed mode than given) is shown by its request all the
    same, and so keyed as these settings key it (counted in ``repeats.rekeyed``); None
    when the file already shows that request with that fingerprint, or the request is
    one the proxy refuses. Pass one ``repeats`` for the entries of one file, in order,
    to number repeated requests."""
    request = orjson.loads(entry.request) if entry.request else {}
    query = settings.keyer.query(query, live=False)
    try:
        derived = key_for(entry.endpoint, request, query, namespace, settings, seed_mode)
        counted = endpoint_for(entry.endpoint).kind.per_occurrence(request)
    except ProxyError:
        return None
    repeats = repeats or Repeats(settings)
    key = repeats.expected(derived)
    if (key, entry.fingerprint) in repeats.shown:
        return None
    repeats.key(derived, counted)
    repeats.shown.add((key, entry.fingerprint))
    repeats.rekeyed += key != entry.key
    record: dict[str, Any] = {
        "endpoint": entry.endpoint,
        "model": entry.model,
        "fingerprint": entry.fingerprint,
        "recorded_at": _time(entry.created),
    }
    if query:
        record["query"] = query
    if namespace:
        record["namespace"] = namespace
    if seed_mode is not None:
        record["seed_mode"] = seed_mode
    response: dict[str, Any] = {
        "status": entry.status,
        "content_type": entry.content_type,
        "body": orjson.loads(entry.body),
    }
    if entry.stream:
        response["events"] = _events(entry.stream)
    record["request"] = request
    record["response"] = response
    return record


def dumps(interactions: Iterable[dict[str, Any] | None]) -> bytes:
    """A cassette of ``interactions`` (a None, an entry :func:`interaction` cannot show, is
    left out)."""
    kept = [item for item in interactions if item is not None]
    return orjson.dumps({"version": VERSION, "interactions": kept}, option=orjson.OPT_INDENT_2) + (
        b"\n"
    )


def dumps_lines(interactions: Iterable[dict[str, Any] | None]) -> bytes:
    """JSON Lines: each interaction, as a cassette has it, on a line of its own (a None
    is left out, as :func:`dumps` does)."""
    return b"".join(orjson.dumps(i) + b"\n" for i in interactions if i is not None)


def dumps_for(name: str, interactions: Iterable[dict[str, Any] | None]) -> bytes:
    """What a file named ``name`` holds: JSON Lines for ``*.jsonl``, else the document."""
    lines = name.lower().endswith(".jsonl")
    return dumps_lines(interactions) if lines else dumps(interactions)


class Dumped(NamedTuple):
    """A file's bytes, how many interactions it shows, and how many of them are keyed
    otherwise than they were recorded (see :func:`interaction`)."""

    data: bytes
    kept: int
    rekeyed: int


def dump(name: str, recordings: Iterable[Recording], settings: Settings) -> Dumped:
    """The one way recordings become the bytes of a file named ``name`` (a session's
    cassette, an export): each shown in order, repeats numbered across the file."""
    repeats = Repeats(settings)
    shown = [interaction(r.entry, settings, *r.where, repeats=repeats) for r in recordings]
    return Dumped(dumps_for(name, shown), sum(item is not None for item in shown), repeats.rekeyed)


class Bad(ValueError):
    """A value a cassette must not hold: the field and what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")


def _get(
    record: dict[str, Any],
    field: str,
    kind: type | tuple[type, ...],
    default: Any,
    at: str = "",
) -> Any:
    """``record[field]`` if it is of ``kind``, ``default`` if absent (``...``: required);
    ``at`` names the object it is in (``response.``)."""
    if field not in record:
        if default is ...:
            raise Bad(at + field, "missing")
        return default
    value = record[field]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise Bad(at + field, f"expected {_names(kind)}, got {_shown(value)}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


_NAMES = {str: "a string", dict: "an object", list: "a list", int: "an integer"}
_NAMES[type(None)] = "null"


def _names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(_NAMES.get(k, k.__name__) for k in _kinds(kind))


def _shown(value: Any) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_TOKEN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")
_QUOTED = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
MAX_CONTENT_TYPE = 256


def plain_content_type(value: str) -> bool:
    """Whether ``value`` is a media type a response header can carry as it is:
    ``type/subtype`` and ``; name=value`` parameters of HTTP tokens (or quoted printable
    ASCII), nothing else (no CR/LF, no control characters)."""
    if len(value) > MAX_CONTENT_TYPE:
        return False
    media, *parameters = value.split(";")
    kind, slash, sub = media.strip().partition("/")
    if not (slash and kind and sub and set(kind) <= _TOKEN and set(sub) <= _TOKEN):
        return False
    for parameter in parameters:
        name, equals, text = parameter.strip().partition("=")
        quoted = len(text) >= 2 and text[0] == text[-1] == '"'
        if not (equals and name and set(name) <= _TOKEN and text):
            return False
        if not (set(text[1:-1]) <= _QUOTED if quoted else set(text) <= _TOKEN):
            return False
    return True


_LATEST = dt.datetime(9999, 12, 31, tzinfo=dt.UTC).timestamp()
MAX_TOKENS = 2**53  # token counts are summed into counters that stores keep as integers


def _created(value: float) -> float:
    """A recording's time as seconds since the epoch: finite, from 1970 to 9999."""
    if not (math.isfinite(value) and 0 <= value <= _LATEST):
        raise ValueError(f"{value!r} is not a time from 1970 to 9999")
    return value


def _events_checked(events: Any) -> list[dict[str, Any]]:
    """A recorded stream's events, each an object with a one-line ``event`` name and its
    ``data`` (JSON) or one-line ``text``: a line break would split it into other events."""
    if not isinstance(events, list):
        raise Bad("response.events", f"expected a list, got {_shown(events)}")
    for i, item in enumerate(events):
        at = f"response.events[{i}]"
        if not isinstance(item, dict) or not ("data" in item or "text" in item):
            raise Bad(at, "expected an object with data or text")
        for name in ("event", "text"):
            text = item.get(name, "")
            if not isinstance(text, str) or "\n" in text or "\r" in text:
                raise Bad(f"{at}.{name}", "expected a string on one line")
    return events


def _response(record: dict[str, Any]) -> tuple[int, str, dict[str, Any], list[dict[str, Any]]]:
    """(status, content type, body, events) of an interaction, each checked: a value that
    would fail when served fails the load instead."""
    response = _get(record, "response", dict, ...)
    status = _get(response, "status", int, ..., "response.")
    if not 200 <= status <= 299:
        raise Bad("response.status", f"{status} is not a successful answer (200-299)")
    content_type = _get(response, "content_type", str, ..., "response.")
    if not plain_content_type(content_type):
        raise Bad("response.content_type", f"{_shown(content_type)} is not a plain media type")
    body = _get(response, "body", dict, ..., "response.")
    events = _events_checked(response["events"]) if "events" in response else []
    return status, content_type, body, events


def _recording(record: Any, settings: Settings, repeats: Repeats) -> Recording:
    """One interaction as a recording, every value checked and its key computed from the
    request it shows; :class:`Bad` names the field that is wrong."""
    if not isinstance(record, dict):
        raise Bad("interaction", f"expected an object, got {_shown(record)}")
    endpoint = _get(record, "endpoint", str, ...)
    try:
        target = endpoint_for(endpoint)
    except ProxyError as exc:
        raise Bad("endpoint", exc.message) from None
    request = _get(record, "request", dict, ...)
    query = settings.keyer.query(_get(record, "query", str, ""), live=False)
    namespace = _get(record, "namespace", str, "")
    seed_mode = _get(record, "seed_mode", (str, type(None)), None)
    if seed_mode is not None and seed_mode not in SEED_MODES:
        raise Bad("seed_mode", f"{_shown(seed_mode)} is not one of {', '.join(SEED_MODES)}")
    fingerprint = _get(record, "fingerprint", (str, type(None)), None)
    recorded_at = _get(record, "recorded_at", str, ...)
    try:
        created = _created(dt.datetime.fromisoformat(recorded_at).timestamp())
    except (ValueError, OverflowError, OSError) as exc:
        raise Bad("recorded_at", f"{_shown(recorded_at)} is not an ISO 8601 time ({exc})") from None
    status, content_type, body, events = _response(record)
    try:
        derived = key_for(endpoint, request, query, namespace, settings, seed_mode)
    except ProxyError as exc:
        raise Bad("request", exc.message) from None
    key = repeats.key(derived, target.kind.per_occurrence(request))
    stated = _get(record, "key", str, key)
    if stated != key:
        raise Bad(
            "key",
            f"{_shown(stated)} is not the key of the request shown ({key}); a cassette's keys "
            "are computed from its requests: remove the key",
        )
    prompt_tokens, completion_tokens = target.kind.usage(body)
    if not (0 <= prompt_tokens <= MAX_TOKENS and 0 <= completion_tokens <= MAX_TOKENS):
        raise Bad("response.body.usage", f"token counts must be from 0 to {MAX_TOKENS}")
    model = request.get("model")
    entry = Entry(
        key=key,
        fingerprint=fingerprint,
        created=created,
        status=status,
        content_type=content_type,
        endpoint=target.path,
        model=_get(record, "model", str, model if isinstance(model, str) else ""),
        seed=request.get("seed") if target.seeded else None,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        body=orjson.dumps(body),
        request=orjson.dumps(request),
        stream=_stream(events),
    )
    return Recording(entry, query, namespace, seed_mode)


def _redacted(recording: Recording, redactor: Redactor) -> Recording:
    """A recording with no secret left in it: a file written by hand, or before redaction
    was on, is cleaned before it is imported into a store or written back."""
    entry = recording.entry
    request = redactor.json_bytes(entry.request)
    body, stream = scrubbed(endpoint_for(entry.endpoint).kind, redactor, entry.body, entry.stream)
    if request is entry.request and body is entry.body and stream is entry.stream:
        return recording
    model = redactor.text(entry.model)
    entry = dataclasses.replace(entry, model=model, request=request, body=body, stream=stream)
    return recording._replace(entry=entry)


def loads(data: bytes, settings: Settings, one_per_key: bool = False) -> list[Recording]:
    """The recordings of a cassette: the document (version 2), its interactions as JSON
    Lines, or a JSON Lines export of version 1; every value checked, secrets redacted.
    Two answers to one (key, fingerprint) fail the load, and with ``one_per_key`` (a
    proxy serving one cassette keeps one answer per request) two answers to one key.
    CassetteError names the interaction (or line) and field."""
    return _recordings(_parse(data), settings, one_per_key)


def _parse(data: bytes) -> dict[str, Any] | list[bytes]:
    """A cassette's document, or the lines of a JSON Lines file."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict) and "interactions" in document:
        return document
    return data.splitlines()


def _items(parsed: dict[str, Any] | list[bytes]) -> Iterator[tuple[str, int, Any]]:
    """(unit, number, interaction or version 1 entry) of a parsed cassette. A document's
    interactions leave it as they are handed out: a large cassette is held about twice
    while it loads, not three times."""
    if isinstance(parsed, list):
        for n, line in enumerate(parsed, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise CassetteError(f"line {n}: not JSON ({exc})") from None
            is_interaction = isinstance(record, dict) and "recorded_at" in record
            yield "line", n, record if is_interaction else from_line(line, n)
        return
    if parsed.get("version") != VERSION:
        raise CassetteError(
            f"version {parsed.get('version')!r} is not one this seedproxy reads ({VERSION})"
        )
    interactions = parsed["interactions"]
    if not isinstance(interactions, list):
        raise CassetteError("interactions: expected a list")
    for n in range(1, len(interactions) + 1):
        record, interactions[n - 1] = interactions[n - 1], None
        yield "interaction", n, record


def _recordings(
    parsed: dict[str, Any] | list[bytes], settings: Settings, one_per_key: bool
) -> list[Recording]:
    recordings = []
    repeats = Repeats(settings)
    first: dict[tuple[str, str | None], int] = {}
    for unit, n, item in _items(parsed):
        try:
            recording = (
                Recording(item)
                if isinstance(item, Entry)
                else (_recording(item, settings, repeats))
            )
        except Bad as exc:
            raise CassetteError(f"{unit} {n}: {exc}") from None
        recording = _redacted(recording, settings.redactor)
        entry = recording.entry
        same = (entry.key, None if one_per_key else entry.fingerprint)
        if same in first:
            what = "request" if one_per_key else "request and fingerprint"
            raise CassetteError(
                f"{unit}s {first[same]} and {n} record the same {what} (key {entry.key}) "
                'with cache.repeat = "same": remove one, or record with cache.repeat = '
                '"sequence" to keep both in order'
            )
        first[same] = n
        recordings.append(recording)
    return recordings


def read(path: Path, settings: Settings, one_per_key: bool = False) -> list[Recording]:
    """The recordings in the cassette at ``path`` (see :func:`loads`); CassetteError
    names the file. The file's bytes are let go once parsed."""
    try:
        return _recordings(_parse(path.read_bytes()), settings, one_per_key)
    except CassetteError as exc:
        raise CassetteError(f"{path}: {exc}") from None
    except OSError as exc:
        raise CassetteError(f"{path}: cannot read it: {exc.strerror or exc}") from None


def write(path: Path, data: bytes) -> bool:
    """Put ``data`` in ``path`` atomically (a temporary file beside it, then a rename), and
    only if it differs from what is there: an unchanged cassette keeps its bytes and time,
    so replaying makes no churn in git. Return whether it was written."""
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:  # mkstemp's file is private; a cassette is as readable as the one it replaces
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return True


def from_line(line: bytes, number: int = 0) -> Entry:
    """One entry of a version 1 (JSON Lines) export: a store's backup, keys as the store
    had them, values checked as a cassette's are."""
    try:
        r = orjson.loads(line)
        if not isinstance(r, dict):
            raise Bad("line", "expected an object")
        created = _get(r, "created", (int, float), ...)
        status, content_type, body, _ = _response({"response": {**r, "body": r.get("response")}})
        request = _get(r, "request", (dict, type(None)), None)
        events = _get(r, "events", (str, type(None)), None)
        return Entry(
            key=_get(r, "key", str, ...),
            fingerprint=_get(r, "fingerprint", (str, type(None)), None),
            created=_created(float(created)),
            status=status,
            content_type=content_type,
            endpoint=endpoint_for(_get(r, "endpoint", str, ...)).path,
            model=_get(r, "model", str, ""),
            seed=_get(r, "seed", (int, type(None)), None),
            prompt_tokens=_get(r, "prompt_tokens", (int, type(None)), 0) or 0,
            completion_tokens=_get(r, "completion_tokens", (int, type(None)), 0) or 0,
            body=orjson.dumps(body),
            request=orjson.dumps(request) if request is not None else b"",
            stream=base64.b64decode(events, validate=True) if events else b"",
        )
    except ProxyError as exc:
        raise CassetteError(f"line {number}: endpoint: {exc.message}") from None
    except (orjson.JSONDecodeError, ValueError, binascii.Error) as exc:
        raise CassetteError(f"line {number}: not a cassette entry ({exc})") from None
