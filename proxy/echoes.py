"""What a hit returns that belongs to the caller: the fields an answer repeats from its
request (Responses ``user``, ``metadata``, ``store``...; chat ``metadata``) that the key
leaves out. Two requests differing only there share an answer, so on a hit, and on an
answer fetched for another client, they carry the caller's own values, or are absent
when the caller sent none. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from . import strictjson
from .keys import parse_path

_ABSENT = object()


class Echoes:
    """The echoed fields of one endpoint that the key ignores (``cache.ignore_fields``,
    and the first field of each of ``cache.ignore_paths``)."""

    __slots__ = ("_needles", "fields")

    def __init__(
        self, echoed: Iterable[str], ignore_fields: Iterable[str], ignore_paths: Iterable[str]
    ) -> None:
        unkeyed = set(ignore_fields) | {str(parse_path(p)[0]) for p in ignore_paths}
        self.fields = frozenset(echoed) & unkeyed
        self._needles = tuple(orjson.dumps(f) for f in sorted(self.fields))

    def mine(self, request: dict[str, Any]) -> dict[str, Any]:
        """The caller's values of the fields, from its request body."""
        return {f: request[f] for f in self.fields if f in request} if self.fields else {}

    def own(self, answer: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
        """``answer`` with the fields as in ``mine`` (a shallow copy; ``answer`` itself
        when that changes nothing)."""
        if all(answer.get(f, _ABSENT) == mine.get(f, _ABSENT) for f in self.fields):
            return answer  # the caller's already (or none): as stored, byte for byte
        kept = {k: v for k, v in answer.items() if k not in self.fields}
        kept.update(mine)
        return kept

    def untouched(self, body: bytes, request: dict[str, Any]) -> bool:
        """Whether a stored answer's bytes go to the caller of ``request`` as they are: it
        sent none of the fields and the bytes name none of them. The common case, and a
        hit's: decided with plain loops, building nothing."""
        for field in self.fields:
            if field in request:
                return False
        return self._names_none(body)

    def _names_none(self, body: bytes) -> bool:
        for needle in self._needles:  # noqa: SIM110 (a loop: all() of a generator costs a hit 1 us)
            if needle in body:
                return False
        return True

    def json(self, body: bytes, mine: dict[str, Any]) -> bytes:
        """A stored JSON answer's bytes as the caller gets them: as they are (no parsing)
        when the caller sent none of the fields and the bytes name none of them."""
        if not mine and self._names_none(body):
            return body
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if not isinstance(answer, dict):
            return body
        owned = self.own(answer, mine)
        return body if owned is answer else strictjson.dumps(owned)  # a caller's huge number
