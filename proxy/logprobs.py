"""Secrets spelled across logprob tokens. Pure: no I/O.

An answer asked for with ``logprobs`` repeats its text token by token: as strings
(``token``), as UTF-8 byte values (``bytes``, integers no string detector reads) and as
the alternatives at each position (``top_logprobs``). A tokenizer cuts a secret into
pieces ("AK", "IAIOS", ...) that no detector sees alone, so each sequence is joined, the
joined text searched with the same detectors, and the tokens overlapping a secret
rewritten: the one where it starts says its placeholder (after what preceded it in that
token), the others keep only what lies outside it; ``bytes`` are made again from the
rewritten token and the alternatives at those positions dropped (the one equal to the
chosen token rewritten with it). Joined, the tokens then read as the redacted text.

Where sequences are: chat choices' ``logprobs.content`` and ``logprobs.refusal``, the
Responses API's ``output_text`` parts' ``logprobs`` (and its stream's delta events'),
legacy completions' ``logprobs.tokens``; a stream's chunks are joined per choice, field
and Responses part."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from .patterns import compile_bytes
from .redact import Redactor
from .sse import iter_events, parse_event

_PASSES = 3  # rewrites of one sequence at most, as Redactor settles a text

# Raw JSON whose logprobs are neither null nor empty, or that escapes a character (which
# could spell the field's name): only such an answer is walked.
_PRESENT = compile_bytes(rb'"logprobs"\s*:\s*(?:\{|\[\s*\{)|\\u[0-9a-fA-F]{4}')


def present(raw: bytes) -> bool:
    """Whether raw JSON (or an event stream) may hold logprob tokens."""
    return _PRESENT.search(raw) is not None


def rewritten(redactor: Redactor, pieces: Sequence[bytes]) -> dict[int, bytes]:
    """The new form of each piece of a text cut in ``pieces`` that overlaps a secret of
    the joined text, by index: the piece where a secret starts holds its placeholder, and
    every piece keeps what lies outside secrets; joined, they are the redacted text."""
    data = b"".join(pieces)
    spans = redactor.secrets(data)
    out: dict[int, bytes] = {}
    first, end = 0, 0  # spans[first:] end after the start of the piece
    for i, piece in enumerate(pieces):
        start, end = end, end + len(piece)
        while first < len(spans) and spans[first][2] <= start:
            first += 1
        parts: list[bytes] = []
        at, n = start, first
        while n < len(spans) and spans[n][1] < end:
            kind, s, e = spans[n]
            if at < s:
                parts.append(data[at:s])
            if s >= start:  # the secret starts here: its placeholder
                parts.append(redactor.placeholder(kind, data[s:e]))
            at = max(at, e)
            n += 1
        if n > first:
            parts.append(data[at:end] if at < end else b"")
            out[i] = b"".join(parts)
    return out


def _utf8(token: Any) -> bytes:
    return token.encode("utf-8", "surrogatepass") if isinstance(token, str) else b""


def _raw(entry: dict[str, Any]) -> bytes:
    """An entry's ``bytes`` as bytes; its token's UTF-8 when they are no list of bytes."""
    values = entry.get("bytes")
    if isinstance(values, list):
        try:
            return bytes(values)
        except (TypeError, ValueError):
            pass
    return _utf8(entry.get("token"))


def _token(entry: dict[str, Any]) -> bytes:
    return _utf8(entry.get("token"))


def _set(entry: dict[str, Any], piece: bytes) -> str | None:
    """``entry``'s token (and ``bytes``, if it has them) made ``piece``; its old token."""
    before = entry.get("token")
    entry["token"] = piece.decode("utf-8", "replace")
    if "bytes" in entry:
        entry["bytes"] = list(piece)
    return before if isinstance(before, str) else None


class _Entries:
    """``[{"token", "bytes", "logprob", "top_logprobs": [...]}, ...]`` (chat, Responses)."""

    sources = (_token, _raw)

    def __init__(self, items: list[Any]) -> None:
        self.items = [item for item in items if isinstance(item, dict)]

    def pieces(self, source: int) -> list[bytes]:
        read = self.sources[source]
        return [read(item) for item in self.items]

    def set(self, i: int, piece: bytes) -> None:
        entry = self.items[i]
        before = _set(entry, piece)
        alternatives = entry.get("top_logprobs")
        if isinstance(alternatives, list):
            kept = [a for a in alternatives if isinstance(a, dict) and a.get("token") == before]
            for alternative in kept:
                _set(alternative, piece)
            entry["top_logprobs"] = kept

    def _alternatives(self) -> list[dict[str, Any]]:
        out = []
        for item in self.items:
            alternatives = item.get("top_logprobs")
            if isinstance(alternatives, list):
                out += [a for a in alternatives if isinstance(a, dict)]
        return out

    def alone(self, redactor: Redactor) -> bool:
        """Each alternative on its own (its ``bytes`` may spell a whole secret). One scan
        over them all, joined by NUL (which no detector matches), says whether any
        needs a look of its own: a call per alternative costs a hundred times more."""
        alternatives = self._alternatives()
        joined = b"\0".join(read(a) for a in alternatives for read in self.sources)
        if not redactor.secrets(joined):
            return False
        changed = False
        for alternative in alternatives:
            for read in self.sources:
                new = rewritten(redactor, [read(alternative)])
                if new:
                    _set(alternative, new[0])
                    changed = True
        return changed

    def texts(self) -> Iterator[str]:
        for source in range(len(self.sources)):
            yield b"".join(self.pieces(source)).decode("utf-8", "replace")
        for alternative in self._alternatives():
            yield _raw(alternative).decode("utf-8", "replace")


class _Tokens:
    """Legacy completions: ``{"tokens": [...], "top_logprobs": [{token: logprob}, ...]}``."""

    sources = (0,)

    def __init__(self, logprobs: dict[str, Any]) -> None:
        self.tokens: list[Any] = logprobs["tokens"]
        self.top = logprobs.get("top_logprobs")

    def pieces(self, source: int) -> list[bytes]:
        return [_utf8(token) for token in self.tokens]

    def set(self, i: int, piece: bytes) -> None:
        before, token = self.tokens[i], piece.decode("utf-8", "replace")
        self.tokens[i] = token
        if isinstance(self.top, list) and i < len(self.top) and isinstance(self.top[i], dict):
            alternatives = self.top[i]
            kept = isinstance(before, str) and before in alternatives
            self.top[i] = {token: alternatives[before]} if kept else {}

    def alone(self, redactor: Redactor) -> bool:
        return False  # alternatives are object keys: strings, which redaction reads

    def texts(self) -> Iterator[str]:
        yield b"".join(self.pieces(0)).decode("utf-8", "replace")


_Sequence = _Entries | _Tokens


def _sequences(value: Any) -> Iterator[_Sequence]:
    """Every logprob sequence in a JSON value (an answer, an event, a Response in one)."""
    if isinstance(value, list):
        for item in value:
            yield from _sequences(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key != "logprobs":
                yield from _sequences(item)
            elif isinstance(item, list):
                yield _Entries(item)
            elif isinstance(item, dict):
                for field in ("content", "refusal"):
                    if isinstance(item.get(field), list):
                        yield _Entries(item[field])
                if isinstance(item.get("tokens"), list):
                    yield _Tokens(item)


def _scrub(sequence: _Sequence, redactor: Redactor) -> bool:
    changed = sequence.alone(redactor)
    for source in range(len(sequence.sources)):
        for _ in range(_PASSES):
            new = rewritten(redactor, sequence.pieces(source))
            if not new:
                break
            for i, piece in new.items():
                sequence.set(i, piece)
            changed = True
    return changed


def scrub(value: Any, redactor: Redactor) -> bool:
    """Rewrite, in place, the logprob tokens of ``value`` (a parsed answer or event) that
    spell a secret; whether anything changed."""
    changed = False
    for sequence in _sequences(value):
        changed = _scrub(sequence, redactor) or changed
    return changed


def texts(value: Any) -> Iterator[str]:
    """What the logprob sequences in a JSON value spell joined (the tokens, and their
    ``bytes`` decoded), and each alternative's ``bytes``: for ``seedproxy scan``."""
    for sequence in _sequences(value):
        yield from sequence.texts()


def stream_texts(payloads: Iterable[Any]) -> Iterator[str]:
    """What a stream's logprob tokens spell joined across its events: per chat choice and
    field, per Responses delta type, item and part."""
    joined: dict[tuple[Any, ...], list[Any]] = {}
    for payload in payloads:
        if not isinstance(payload, dict):
            continue
        entries = payload.get("logprobs")
        if isinstance(entries, list) and str(payload.get("type", "")).endswith(".delta"):
            where = [payload.get(k) for k in ("type", "item_id", "output_index", "content_index")]
            joined.setdefault(("response", *where), []).extend(entries)
        choices = payload.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
            for field, items in logprobs.items() if isinstance(logprobs, dict) else ():
                if isinstance(items, list):
                    joined.setdefault(("choice", choice.get("index"), field), []).extend(items)
    for items in joined.values():
        yield from _Entries(items).texts()


def stream_spells(redactor: Redactor, events: bytes) -> bool:
    """Whether the logprob tokens of a raw event stream, joined, spell a secret."""
    if not redactor.active or not present(events):
        return False
    payloads = []
    for raw in iter_events(events):
        _, data = parse_event(raw)
        try:
            payloads.append(orjson.loads(data or b""))
        except orjson.JSONDecodeError:
            continue
    return any(redactor.secrets(_utf8(text)) for text in stream_texts(payloads))
