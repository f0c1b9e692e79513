"""``seedproxy scan PATH...``: the secrets the detectors find in cassettes, exports and
cache directories, for a pre-commit hook or CI to refuse them. Reads only."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .redact import Redactor, mask
from .store import Entry
from .store.disk import DiskStore

SUFFIXES = (".json", ".jsonl")  # what a directory of cassettes is searched for


class Finding(NamedTuple):
    file: str
    entry: str  # "interaction 3", "line 2", "entry 9c25… fp_x", "drift event 1f3a…", "-"
    kind: str
    excerpt: str  # masked


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


def _texts(raw: bytes) -> Iterator[str]:
    """The strings of JSON bytes, or of each ``data:`` line of an event stream, else the
    bytes as text."""
    try:
        yield from _strings(orjson.loads(raw))
        return
    except orjson.JSONDecodeError:
        pass
    if raw.startswith((b"data:", b"event:")):
        for line in raw.split(b"\n"):
            if line.startswith(b"data:"):
                yield from _texts(line[5:].strip())
        return
    yield raw.decode("utf-8", "replace")


class Scanner:
    """Finds secrets with ``redactor`` and names where each one is."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def _in(self, file: str, entry: str, texts: Iterator[str]) -> Iterator[Finding]:
        for text in texts:
            for found in self.redactor.find(text):
                yield Finding(file, entry, found.kind, mask(found.value))

    def file(self, path: Path) -> Iterator[Finding]:
        """A cassette (its interactions), a JSON Lines export (its lines), or any file."""
        name, raw = str(path), path.read_bytes()
        try:
            document = None if path.suffix == ".jsonl" else orjson.loads(raw)
        except orjson.JSONDecodeError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("interactions"), list):
            for n, record in enumerate(document["interactions"], 1):
                yield from self._in(name, f"interaction {n}", _strings(record))
            yield from self._in(
                name, "-", _strings({k: v for k, v in document.items() if k != "interactions"})
            )
            return
        if document is not None:
            yield from self._in(name, "-", _strings(document))
            return
        for n, line in enumerate(raw.splitlines(), 1):
            yield from self._in(name, f"line {n}", self._line(line))

    def _line(self, line: bytes) -> Iterator[str]:
        yield from _texts(line)
        try:
            record = orjson.loads(line)
            events = record.get("events") if isinstance(record, dict) else None
            if isinstance(events, str):  # a version 1 export keeps a stream as base64
                yield from _texts(base64.b64decode(events, validate=True))
        except (orjson.JSONDecodeError, binascii.Error):
            pass

    def _entry(self, name: str, entry: Entry) -> Iterator[Finding]:
        where = f"entry {entry.key[:16]} {entry.fingerprint}"
        texts = [
            entry.model,
            *(t for b in (entry.request, entry.body, entry.stream) if b for t in _texts(b)),
        ]
        yield from self._in(name, where, iter(texts))

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
        """A file, a cache directory, or a directory of cassettes and caches."""
        if path.is_file():
            yield from self.file(path)
        elif is_cache(path):
            yield from asyncio.run(self.cache(path))
        else:
            for child in sorted(path.iterdir()):
                if (child.is_dir() and child.name != ".git") or child.suffix in SUFFIXES:
                    yield from self.path(child)
