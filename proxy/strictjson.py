"""A request body with one meaning: JSON with a key given twice is refused (parsers
disagree on which one counts, so the key could describe another request than the
upstream reads), and integers beyond 64 bits are kept exact (orjson reads them as
floats, which would give distinct numbers one key). Pure."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_KEY_END = re.compile(rb'"\s*:')  # every object key ends so; so may a few strings
_BIG = float(2**63)  # a float this large may be an integer orjson could not keep


class BigInt(int):
    """An integer beyond 64 bits, written back exactly as a JSON number."""


class DuplicateKey(ValueError):
    """The same key twice in one JSON object."""


def _exact(value: Any) -> Any:
    if isinstance(value, BigInt):
        return orjson.Fragment(str(int(value)).encode())
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(value: Any, option: int = 0) -> bytes:
    """orjson.dumps that writes :class:`BigInt` numbers exactly."""
    return orjson.dumps(value, default=_exact, option=option | orjson.OPT_PASSTHROUGH_SUBCLASS)


def _census(value: Any) -> tuple[int, bool]:
    """How many object keys ``value`` holds, and whether a float may hide a big integer."""
    keys, suspect, stack = 0, False, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and abs(item) >= _BIG:
            suspect = True
    return keys, suspect


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise DuplicateKey(name)
            seen.add(name)
    return out


def _int(text: str) -> int:
    number = int(text)
    return BigInt(number) if not -(2**63) <= number < 2**64 else number


def loads(raw: bytes) -> Any:
    """``raw`` parsed; :class:`DuplicateKey` for a key given twice. A second, slower parse
    runs only when a cheap count cannot rule out duplicates or big integers (a string
    holding ``":``, such as tool-call arguments, or a huge number)."""
    value = orjson.loads(raw)
    keys, suspect = _census(value)
    if not suspect and len(_KEY_END.findall(raw)) == keys:
        return value
    try:
        exact = json.loads(raw, object_pairs_hook=_pairs, parse_int=_int)
    except DuplicateKey:
        raise
    except (RecursionError, ValueError):
        return value  # orjson read it; a limit of the slow parser is no reason to refuse
    return exact if suspect and _census_big(exact) else value


def _census_big(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, BigInt):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
