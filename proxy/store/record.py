"""The byte format of one key's stored variants: a JSON header, then the raw bodies. Pure."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import fields

import orjson

from . import Entry

MAGIC = b"SPv2"
_LEN = struct.Struct(">I")
_BLOBS = ("body", "request", "stream")
_META = [f.name for f in fields(Entry) if f.name != "key" and f.name not in _BLOBS]
# Entry(key, *meta, *blobs) builds an entry positionally (no keyword dict per hit)
assert [f.name for f in fields(Entry)] == ["key", *_META, *_BLOBS]


class RecordError(ValueError):
    """Bytes that are not a complete record."""


def encode(entries: Sequence[Entry]) -> bytes:
    """Pack entries of one key; bodies stay raw bytes so a hit needs no JSON re-encoding."""
    header = orjson.dumps(
        [
            [*(getattr(e, name) for name in _META), *(len(getattr(e, b)) for b in _BLOBS)]
            for e in entries
        ]
    )
    parts = [MAGIC, _LEN.pack(len(header)), header]
    for e in entries:
        parts += (getattr(e, b) for b in _BLOBS)
    return b"".join(parts)


def decode(key: str, raw: bytes) -> list[Entry]:
    """Unpack a record written by :func:`encode`; raise RecordError on anything truncated."""
    if raw[:4] != MAGIC or len(raw) < 8:
        raise RecordError("bad magic")
    (hlen,) = _LEN.unpack_from(raw, 4)
    pos = 8 + hlen
    try:
        rows = orjson.loads(raw[8:pos])
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"bad header: {exc}") from None
    entries = []
    end = len(raw)
    if not isinstance(rows, list):
        raise RecordError("bad header")
    for row in rows:
        if not isinstance(row, list) or len(row) != len(_META) + len(_BLOBS):
            raise RecordError("bad header row")
        blobs = []
        for length in row[len(_META) :]:
            if pos + length > end:
                raise RecordError("truncated")
            blobs.append(raw[pos : pos + length])
            pos += length
        entries.append(Entry(key, *row[: len(_META)], *blobs))
    if pos != len(raw):
        raise RecordError("trailing bytes")
    return entries
