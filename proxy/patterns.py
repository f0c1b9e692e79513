"""Regular expressions over what clients send and upstreams answer, on RE2.

Python's ``re`` backtracks: a pattern like ``eyJ[A-Za-z0-9_-]{8,}\\.eyJ`` costs quadratic
time on a body made of ``eyJ`` runs, and the event loop is shared by every client. RE2
(``google-re2``) matches in time linear in the text, whatever the pattern, by refusing
what needs backtracking (look-around, back-references). Every pattern run on a request
or a response body (detectors, ``[redact] patterns``, ``[[cache.normalize]]``, error-body
masking, ``seedproxy scan``) is compiled here."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import AnyStr, Generic, Protocol, TypeVar, cast

import re2

_Text = TypeVar("_Text", str, bytes, covariant=True)


class Match(Protocol[_Text]):
    def start(self, group: int = 0) -> int: ...
    def end(self, group: int = 0) -> int: ...
    def span(self, group: int = 0) -> tuple[int, int]: ...
    def group(self, group: int = 0) -> _Text | None: ...
    @property
    def lastindex(self) -> int | None: ...


class Pattern(Protocol, Generic[AnyStr]):
    @property
    def groups(self) -> int: ...
    @property
    def groupindex(self) -> dict[str, int]: ...
    def search(
        self, text: AnyStr, pos: int | None = None, endpos: int | None = None
    ) -> Match[AnyStr] | None: ...
    def finditer(
        self, text: AnyStr, pos: int | None = None, endpos: int | None = None
    ) -> Iterator[Match[AnyStr]]: ...
    def sub(self, repl: AnyStr | Callable[[Match[AnyStr]], AnyStr], text: AnyStr) -> AnyStr: ...


def _options() -> object:
    options = re2.Options()
    options.log_errors = False  # the reason is raised, not also printed on stderr
    return options


def compile_str(pattern: str) -> Pattern[str]:
    """``pattern`` (RE2 syntax) compiled for text; ValueError with RE2's reason."""
    return cast("Pattern[str]", _compile(pattern))


def compile_bytes(pattern: bytes) -> Pattern[bytes]:
    """``pattern`` (RE2 syntax) compiled for bytes; ValueError with RE2's reason."""
    return cast("Pattern[bytes]", _compile(pattern))


def _compile(pattern: str | bytes) -> object:
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"not RE2 syntax: {reason}") from None


# In a replacement: a group (\\1 to \\99, \\g<1>, \\g<name>) or a backslash escape.
_TEMPLATE = re.compile(r"\\(?:([1-9][0-9]?)|g<([^>]*)>|(.)|$)", re.DOTALL)
_ESCAPES = {"\\": "\\", "n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}


def template(replace: str, pattern: Pattern[str]) -> Callable[[Match[str]], str]:
    """``replace`` with Python's ``re.sub`` meaning (groups as ``\\1`` or ``\\g<name>``,
    ``\\n`` and the like), as a function of a match: RE2's own expansion garbles text that
    is not ASCII. ValueError naming a group the pattern does not have or a bad escape."""
    pieces: list[str | int] = []  # text, or the number of a group
    last = 0
    for m in _TEMPLATE.finditer(replace):
        pieces.append(replace[last : m.start()])
        last = m.end()
        number, name, escape = m.groups()
        if number is not None or name is not None:
            group = number if number is not None else name
            assert group is not None
            index = int(group) if group.isdigit() else pattern.groupindex.get(group)
            if index is None or index > pattern.groups:
                raise ValueError(f"the pattern has no group {group}")
            pieces.append(index)
        elif escape in _ESCAPES:
            pieces.append(_ESCAPES[escape])
        elif escape is None or (escape.isascii() and escape.isalnum()):
            raise ValueError(f"bad escape {m.group(0)!r} (write \\\\ for a backslash)")
        else:
            pieces.append(m.group(0))  # as re.sub: an unknown escape of a sign stays
    pieces.append(replace[last:])
    if all(isinstance(p, str) for p in pieces):
        text = "".join(str(p) for p in pieces)
        return lambda m: text
    return lambda m: "".join(p if isinstance(p, str) else m.group(p) or "" for p in pieces)
