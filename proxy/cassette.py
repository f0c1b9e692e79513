"""Cassettes: recordings in one file a reviewer can read, to commit and replay in CI.

A cassette is pretty JSON (2-space indent, a final newline)::

    {"version": 2, "interactions": [
      {"endpoint": "/v1/chat/completions", "model": ..., "fingerprint": ...,
       "recorded_at": "2026-01-31T12:00:00.000000Z",
       "request": {...the body as sent upstream...},
       "response": {"status": 200, "content_type": "application/json", "body": {...},
                    "events": [{"event": "response.created", "data": {...}}, ...]}}]}

``events`` (the Responses API's recorded stream) only when kept; ``query`` and
``namespace`` only when the request had them; ``key`` only when the key cannot be computed
from the rest (an export of an entry recorded under other settings). Interactions are in
recording order and each object keeps its key order, so writing what was read gives the
same bytes: replaying never rewrites a file. Entries never hold request headers, so no
credential can reach a cassette.

Keys are not trusted from the file but computed again on load, from the request and the
current settings (seed policy, ``cache.ignore_fields``, ignore paths, normalize rules,
redaction, upstream URL), so a cassette survives a change of either. With
``cache.repeat = "sequence"`` (and for Responses requests naming a ``conversation``) the
n-th interaction with the same request gets the n-th repeat's key, so the order of the
interactions is the order of the answers.

A file named ``*.jsonl`` holds the same interactions as JSON Lines, one a line, for tools
that stream records; JSON Lines exports of version 1 (one entry per line) are still read,
keys and all."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .call import endpoint_for, seeded
from .config import Settings
from .errors import ProxyError
from .keys import cache_key, occurrence_key
from .kinds import scrubbed
from .redact import Redactor
from .sse import EventSplitter, parse_event
from .store import Entry

VERSION = 2


class CassetteError(ValueError):
    """A file that is not a cassette; the message says where and why."""


class Recording(NamedTuple):
    """An entry of a cassette with what its key was computed from besides the request."""

    entry: Entry
    query: str = ""
    namespace: str = ""


def key_for(
    endpoint: str, request: dict[str, Any], query: str, namespace: str, settings: Settings
) -> str:
    """The key the proxy computes for ``request`` (the body as sent upstream): the seed
    policy applies as it does to a client's body, so a seed the policy would add matches."""
    target = endpoint_for(endpoint)
    body = dict(request)
    seeded(target, body, settings.seed)
    canonical = settings.rules.canonical(body)
    return cache_key(target.path, query, namespace, settings.upstream.base_url, canonical)


def _time(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _events(stream: bytes) -> list[dict[str, Any]]:
    """Raw SSE bytes as a list: ``{"event": name, "data": JSON}``, or ``"text"`` for data
    that is not JSON."""
    splitter = EventSplitter()
    raws = splitter.feed(stream)
    if splitter.pending.strip():
        raws.append(splitter.pending)
    out = []
    for raw in raws:
        name, data = parse_event(raw)
        item: dict[str, Any] = {} if name is None else {"event": name}
        if data is not None:
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
        self.sequence = settings.cache.repeat == "sequence"
        self.seen: Counter[str] = Counter()

    def key(self, base: str, counted: bool = False) -> str:
        """The key of the next interaction whose request has key ``base``."""
        if not (self.sequence or counted):
            return base
        self.seen[base] += 1
        return occurrence_key(base, self.seen[base] - 1)

    def expected(self, base: str, counted: bool = False) -> str:
        """The key :meth:`key` would give, without counting it."""
        return occurrence_key(base, self.seen[base]) if self.sequence or counted else base


def interaction(
    entry: Entry,
    settings: Settings,
    query: str = "",
    namespace: str = "",
    repeats: Repeats | None = None,
) -> dict[str, Any]:
    """One entry as a cassette's interaction; pass one ``repeats`` for the entries of one
    file, in order, to number repeated requests."""
    request = orjson.loads(entry.request) if entry.request else {}
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
    try:
        derived = key_for(entry.endpoint, request, query, namespace, settings)
        counted = endpoint_for(entry.endpoint).kind.per_occurrence(request)
    except ProxyError:
        derived, counted = "", False
    repeats = repeats or Repeats(settings)
    if derived and repeats.expected(derived, counted) == entry.key:
        repeats.key(derived, counted)
    else:
        record["key"] = entry.key
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


def dumps(interactions: Iterable[dict[str, Any]]) -> bytes:
    return (
        orjson.dumps(
            {"version": VERSION, "interactions": list(interactions)}, option=orjson.OPT_INDENT_2
        )
        + b"\n"
    )


def dumps_lines(interactions: Iterable[dict[str, Any]]) -> bytes:
    """JSON Lines: each interaction, as a cassette has it, on a line of its own."""
    return b"".join(orjson.dumps(i) + b"\n" for i in interactions)


def dumps_for(name: str, interactions: Iterable[dict[str, Any]]) -> bytes:
    """What a file named ``name`` holds: JSON Lines for ``*.jsonl``, else the document."""
    lines = name.lower().endswith(".jsonl")
    return dumps_lines(interactions) if lines else dumps(interactions)


def _recording(record: Any, settings: Settings, repeats: Repeats) -> Recording:
    if not isinstance(record, dict):
        raise TypeError("not an object")
    request, response = record["request"], record["response"]
    if not isinstance(request, dict) or not isinstance(response, dict):
        raise TypeError("request and response must be objects")
    endpoint, query = str(record["endpoint"]), str(record.get("query", ""))
    namespace = str(record.get("namespace", ""))
    created = dt.datetime.fromisoformat(record["recorded_at"]).timestamp()
    kind = endpoint_for(endpoint).kind
    key = record.get("key") or repeats.key(
        key_for(endpoint, request, query, namespace, settings), kind.per_occurrence(request)
    )
    body = response["body"]
    prompt_tokens, completion_tokens = kind.usage(body) if isinstance(body, dict) else (0, 0)
    model = request.get("model")
    entry = Entry(
        key=str(key),
        fingerprint=record.get("fingerprint"),
        created=created,
        status=int(response["status"]),
        content_type=str(response["content_type"]),
        endpoint=endpoint,
        model=str(record.get("model", model if isinstance(model, str) else "")),
        seed=request.get("seed") if endpoint_for(endpoint).seeded else None,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        body=orjson.dumps(body),
        request=orjson.dumps(request),
        stream=_stream(response["events"]) if response.get("events") else b"",
    )
    return Recording(entry, query, namespace)


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


def loads(data: bytes, settings: Settings) -> list[Recording]:
    """The recordings of a cassette (version 2) or of a JSON Lines export (version 1),
    secrets redacted."""
    return [_redacted(r, settings.redactor) for r in _loads(data, settings)]


def _loads(data: bytes, settings: Settings) -> list[Recording]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        document = None
    if not isinstance(document, dict) or "interactions" not in document:
        return _lines(data, settings)
    if document.get("version") != VERSION:
        raise CassetteError(
            f"version {document.get('version')!r} is not one this seedproxy reads ({VERSION})"
        )
    interactions = document["interactions"]
    if not isinstance(interactions, list):
        raise CassetteError("interactions: expected a list")
    repeats = Repeats(settings)
    return [
        _numbered(f"interaction {n}", record, settings, repeats)
        for n, record in enumerate(interactions, 1)
    ]


def _numbered(where: str, record: Any, settings: Settings, repeats: Repeats) -> Recording:
    """One interaction; CassetteError says ``where`` it is and what is wrong with it."""
    try:
        return _recording(record, settings, repeats)
    except ProxyError as exc:
        raise CassetteError(f"{where}: {exc.message}") from None
    except (KeyError, TypeError, ValueError, orjson.JSONEncodeError) as exc:
        problem = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CassetteError(f"{where}: not a recording ({problem})") from None


def _lines(data: bytes, settings: Settings) -> list[Recording]:
    """JSON Lines: a cassette's interactions one a line (:func:`dumps_lines`), or entries of
    a version 1 export (keys and all)."""
    recordings, repeats = [], Repeats(settings)
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CassetteError(f"line {n}: not JSON ({exc})") from None
        if isinstance(record, dict) and "recorded_at" in record:
            recordings.append(_numbered(f"line {n}", record, settings, repeats))
        else:
            recordings.append(Recording(from_line(line, n)))
    return recordings


def read(path: Path, settings: Settings) -> list[Recording]:
    """The recordings in the cassette at ``path``; CassetteError names the file."""
    try:
        return loads(path.read_bytes(), settings)
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
    """One entry of a version 1 (JSON Lines) export."""
    try:
        r = orjson.loads(line)
        return Entry(
            key=str(r["key"]),
            fingerprint=r["fingerprint"],
            created=float(r["created"]),
            status=int(r["status"]),
            content_type=str(r["content_type"]),
            endpoint=str(r["endpoint"]),
            model=str(r["model"]),
            seed=r.get("seed"),
            prompt_tokens=int(r.get("prompt_tokens") or 0),
            completion_tokens=int(r.get("completion_tokens") or 0),
            body=orjson.dumps(r["response"]),
            request=orjson.dumps(r["request"]) if r.get("request") is not None else b"",
            stream=base64.b64decode(r["events"]) if r.get("events") else b"",
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CassetteError(f"line {number}: not a cassette entry ({exc})") from None
