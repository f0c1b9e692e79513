"""Setting values from what a user writes: durations, sizes, tokens, rewrite tables, and the
scalars that environment variables and flags give as text. Pure; errors are ValueErrors
the loader prefixes with where the value was set."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any

from ..keys import Rewrite


def did_you_mean(word: str, choices: Iterable[str], shown: Callable[[str], str] = str) -> str:
    """``"; did you mean X?"`` when ``word`` is a close misspelling of one of ``choices``
    (X as ``shown``: the name the user would type), else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {shown(close[0])}?" if close else ""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``"90"``, ``"30m"``, ``"1h"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '30m' or '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if not m:
            raise ValueError(f"expected a duration such as 30, '30m' or '1h', got {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as ``"32MB"`` or ``"1GiB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1048576 or '32MB'")
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _SIZES | {"": 1}:
            raise ValueError(f"expected a size such as 1048576 or '32MB', got {value!r}")
        size = int(float(m.group(1)) * _SIZES.get(m.group(2).lower(), 1))
    if size <= 0:
        raise ValueError("must be positive")
    return size


def parse_rewrites(value: Any) -> tuple[Rewrite, ...]:
    """``[[cache.normalize]]`` tables as checked rules, in order."""
    if isinstance(value, str):
        raise ValueError("[[cache.normalize]] tables can only be set in the config file")
    if not isinstance(value, list):
        raise ValueError("expected [[cache.normalize]] tables")
    rules = []
    for n, table in enumerate(value, 1):
        try:
            rules.append(Rewrite.parse(table))
        except ValueError as exc:  # "cache.normalize[1].pattern: ..." once the key is named
            raise ValueError(f"[{n}]{'' if str(exc).startswith('.') else ': '}{exc}") from None
    return tuple(rules)


def parse_auto(value: Any) -> bool | None:
    """``true``, ``false``, or ``"auto"`` (None): what other settings imply."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        return boolean(value, from_text=True)
    except ValueError:
        raise ValueError(f'expected true, false or "auto", got {value!r}') from None


_EMPTY_TOKEN = "an empty token would let in requests that send no token; remove it"


def parse_tokens(value: Any) -> tuple[str, ...]:
    """Proxy tokens: a list, or comma-separated text from the environment or a flag. An
    empty one is refused, never dropped: ``SEEDPROXY_AUTH_TOKENS=","`` must not turn
    authentication off without a word."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    if any(not v.strip() for v in value):
        raise ValueError(_EMPTY_TOKEN)
    return tuple(value)


def choice(choices: tuple[str, ...], value: Any) -> Any:
    if value not in choices:
        hint_text = did_you_mean(str(value), choices)
        raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}{hint_text}")
    return value


def strings(value: Any, from_text: bool) -> tuple[str, ...]:
    if from_text and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def boolean(value: Any, from_text: bool) -> bool:
    if from_text and isinstance(value, str):
        low = value.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off"}:
            return False
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _int(value: Any, from_text: bool) -> int:
    if from_text and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _float(value: Any, from_text: bool) -> float:
    if from_text and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _str(value: Any, from_text: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


SCALARS: dict[Any, Callable[[Any, bool], Any]] = {
    bool: boolean,
    int: _int,
    float: _float,
    str: _str,
}
