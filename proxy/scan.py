"""``seedproxy scan PATH...``: the secrets the detectors find in cassettes (ours, and
vcrpy's YAML), exports and cache directories, for a pre-commit hook or CI to refuse them.
Reads only.

A streamed answer spells its text across many events ("er me: AK", "IAIOSFODN",
"N7EXAMPLE"): each stream's deltas are joined again (chat ``delta`` fields per choice,
Responses ``*.delta`` events per output item and part, legacy completions' ``text``) and
the joined texts are searched too, as well as every string of every event. Logprob
tokens are joined the same way, their ``bytes`` decoded (:mod:`proxy.logprobs`), in
answers as in streams."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gzip
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

import orjson
import yaml

from . import logprobs
from .keys import QUERY_CREDENTIAL, query_credentials
from .redact import Redactor, mask, names_secret
from .sse import iter_events, parse_event
from .store import Entry
from .store.disk import DiskStore

SUFFIXES = (".json", ".jsonl", ".yaml", ".yml")  # what a directory is searched for
_VCR = (".yaml", ".yml")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Finding(NamedTuple):
    file: str
    entry: str  # "interaction 3", "line 2", "entry 9c25… fp_x", "drift event 1f3a…", "-"
    kind: str
    excerpt: str  # masked


class Skipped(NamedTuple):
    path: str
    reason: str


def is_cache(path: Path) -> bool:
    return (path / "entries" / "cache.db").is_file()


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value (object keys too), decoded: an escaped secret is found."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
            if isinstance(item, str) and names_secret(key):  # {"SecretAccessKey": "..."}
                yield f"{key} = {item}"


def _looked_at(value: Any) -> Iterator[str]:
    """The strings of a JSON value, and what its logprob tokens spell joined."""
    yield from _strings(value)
    yield from logprobs.texts(value)


def _payloads(raw: bytes) -> Iterator[Any]:
    """The data of each event of a raw event stream: JSON, or text when it is not."""
    for event in iter_events(raw):
        _, data = parse_event(event)
        if data is not None:
            try:
                yield orjson.loads(data)
            except orjson.JSONDecodeError:
                yield data.decode("utf-8", "replace")


def _leaves(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(path, string) of every string in a chat delta; a list item is placed by its own
    ``index`` (a tool call's), as the deltas of one stream refer to it."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            index = item.get("index", n) if isinstance(item, dict) else n
            yield from _leaves(item, (*path, index))


def reassembled(payloads: Iterable[Any]) -> list[str]:
    """The texts a stream's deltas spell once joined: per Responses output item, part and
    event type (``response.output_text.delta``, ``...arguments.delta``), per chat
    choice and delta field (``content``, a tool call's ``arguments``), and its logprob
    tokens (:func:`~proxy.logprobs.stream_texts`)."""
    payloads = list(payloads)
    parts: dict[tuple[Any, ...], list[str]] = {}
    for payload in payloads:
        if not isinstance(payload, dict):
            continue
        delta = payload.get("delta")
        if isinstance(delta, str):
            where = (payload.get("type"), payload.get("item_id"), payload.get("output_index"))
            parts.setdefault((*where, payload.get("content_index")), []).append(delta)
        choices = payload.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index")
            if isinstance(choice.get("text"), str):  # legacy completions
                parts.setdefault(("text", index), []).append(choice["text"])
            for path, text in _leaves(choice.get("delta"), ("choice", index)):
                parts.setdefault(path, []).append(text)
    joined = ["".join(texts) for texts in parts.values() if len(texts) > 1]
    return joined + list(logprobs.stream_texts(payloads))


def _texts(raw: bytes) -> Iterator[str]:
    """The strings of JSON bytes; of a raw event stream, each event's and what its deltas
    spell joined; else the bytes as text."""
    try:
        yield from _looked_at(orjson.loads(raw))
        return
    except orjson.JSONDecodeError:
        pass
    if raw.lstrip().startswith((b"data:", b"event:", b":")):
        payloads = list(_payloads(raw))
        for payload in payloads:
            yield from _looked_at(payload)
        yield from reassembled(payloads)
        return
    yield raw.decode("utf-8", "replace")


def _record(record: Any) -> Iterator[str]:
    """The strings of one interaction (a cassette's, a JSON Lines line) and of its stream:
    a cassette's event list, or a version 1 export's base64 events."""
    yield from _looked_at(record)
    if not isinstance(record, dict):
        return
    response = record.get("response")
    events = response.get("events") if isinstance(response, dict) else record.get("events")
    if isinstance(events, list):
        yield from reassembled(e.get("data") for e in events if isinstance(e, dict))
    elif isinstance(events, str):  # a version 1 export keeps a stream as base64
        with contextlib.suppress(binascii.Error):
            yield from _texts(base64.b64decode(events, validate=True))


def _body(value: bytes) -> bytes:
    """A recorded body as text: vcrpy keeps a gzipped one as it came."""
    if value.startswith(b"\x1f\x8b"):
        with contextlib.suppress(OSError, EOFError):
            return gzip.decompress(value)
    return value


def _vcr(value: Any) -> Iterator[str]:
    """Every string of a vcrpy interaction (URI, headers, status, bodies), a body also as
    JSON or as an event stream."""
    if isinstance(value, bytes):
        yield from _texts(_body(value))
    elif isinstance(value, str):
        yield value
        if value.lstrip().startswith(("{", "[", "data:", "event:")):
            yield from _texts(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, list):
        for item in value:
            yield from _vcr(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _vcr(key)
            yield from _vcr(item)


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, dict) else None


class Scanner:
    """Finds secrets with ``redactor``, names where each one is, and keeps what it did
    not read, and why, in ``skipped``."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.skipped: list[Skipped] = []

    def _in(self, file: str, entry: str, texts: Iterable[str]) -> Iterator[Finding]:
        seen: set[tuple[str, str]] = set()  # a secret in one event and in the joined text
        for text in texts:
            for found in self.redactor.find(text):
                if (found.kind, found.value) not in seen:
                    seen.add((found.kind, found.value))
                    yield Finding(file, entry, found.kind, mask(found.value))

    def _credentials(self, file: str, entry: str, query: Any) -> Iterator[Finding]:
        """The credentials a recorded query string holds as they were sent (our
        cassettes' ``query``, a vcrpy request's ``uri``), but for those a detector names
        already (``?key=AIza...`` is a Google API key)."""
        for value in query_credentials(query if isinstance(query, str) else ""):
            if next(self.redactor.find(unquote_plus(value)), None) is None:
                yield Finding(file, entry, QUERY_CREDENTIAL, mask(value))

    def file(self, path: Path) -> Iterator[Finding]:
        """A cassette (its interactions), a JSON Lines file (its lines), a vcrpy YAML
        cassette, or any file."""
        name = str(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            self.skipped.append(Skipped(name, f"cannot read it: {exc.strerror or exc}"))
            return
        if path.suffix in _VCR:
            yield from self._yaml(name, raw)
            return
        try:
            document = None if path.suffix == ".jsonl" else orjson.loads(raw)
        except orjson.JSONDecodeError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("interactions"), list):
            for n, record in enumerate(document["interactions"], 1):
                yield from self._in(name, f"interaction {n}", _record(record))
                yield from self._credentials(name, f"interaction {n}", _field(record, "query"))
            rest = {k: v for k, v in document.items() if k != "interactions"}
            yield from self._in(name, "-", _looked_at(rest))
            return
        if document is not None:
            yield from self._in(name, "-", _looked_at(document))
            return
        for n, line in enumerate(raw.splitlines(), 1):
            try:
                record = orjson.loads(line)
                texts: Iterable[str] = _record(record)
            except orjson.JSONDecodeError:
                record, texts = None, _texts(line)
            yield from self._in(name, f"line {n}", texts)
            yield from self._credentials(name, f"line {n}", _field(record, "query"))

    def _yaml(self, name: str, raw: bytes) -> Iterator[Finding]:
        """A vcrpy cassette: each interaction's request and response, bodies and headers."""
        try:
            document = yaml.load(raw, Loader=_LOADER)  # a safe loader: no tag runs code
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())[:200]
            self.skipped.append(Skipped(name, f"not YAML that a safe loader reads: {reason}"))
            return
        interactions = document.get("interactions") if isinstance(document, dict) else None
        if not isinstance(interactions, list):
            yield from self._in(name, "-", _vcr(document))
            return
        for n, interaction in enumerate(interactions, 1):
            yield from self._in(name, f"interaction {n}", _vcr(interaction))
            uri = _field(_field(interaction, "request"), "uri")
            query = uri.partition("?")[2] if isinstance(uri, str) else ""
            yield from self._credentials(name, f"interaction {n}", query)

    def _entry(self, name: str, entry: Entry) -> Iterator[Finding]:
        where = f"entry {entry.key[:16]} {entry.fingerprint}"
        texts = [
            entry.model,
            *(t for b in (entry.request, entry.body, entry.stream) if b for t in _texts(b)),
        ]
        yield from self._in(name, where, texts)

    async def cache(self, path: Path) -> list[Finding]:
        """Every entry and event of a disk cache directory."""
        store = DiskStore(path)
        found: list[Finding] = []
        try:
            for key in await store.keys():
                for entry in await store.variants(key):
                    found += self._entry(str(path), entry)
            for kind in ("drift", "fingerprint_change"):
                for event in await store.events(kind, limit=10**9):
                    where = f"{kind.replace('_', ' ')} event {str(event.get('id', ''))[:12]}"
                    found += self._in(str(path), where, _strings(event))
        finally:
            await store.close()
        return found

    def path(self, path: Path) -> Iterator[Finding]:
        """A file, a cache directory, or a directory of cassettes and caches (what it
        does not read is in ``skipped``)."""
        if path.is_file():
            yield from self.file(path)
        elif is_cache(path):
            yield from asyncio.run(self.cache(path))
        elif path.is_dir():
            for child in sorted(path.iterdir()):
                if child.name == ".git":
                    self.skipped.append(Skipped(str(child), "version control data"))
                elif child.is_dir() or (child.is_file() and child.suffix in SUFFIXES):
                    yield from self.path(child)
                elif child.is_file():
                    shown = child.suffix or "no suffix"
                    self.skipped.append(
                        Skipped(str(child), f"not a cassette, export or cache ({shown})")
                    )
                else:
                    self.skipped.append(Skipped(str(child), "not a regular file"))
        else:
            self.skipped.append(Skipped(str(path), "not a regular file or directory"))
