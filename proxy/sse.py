"""Server-sent events: split a byte stream into events, accumulate completion chunks into
one completion, and synthesize chunks back from a stored completion. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

from . import strictjson

DONE = b"data: [DONE]\n\n"
# a blank line after a line's end; "\n\r\n": a line ended by LF, the blank one by CRLF
_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r", b"\n\r\n")
_PIECE = re.compile(r"\s*\S+|\s+")
PIECE_CHARS = 24  # a synthesized delta carries about this much text (a few tokens)


def _event_ends(buf: bytes) -> Iterator[int]:
    """Where each complete event of ``buf`` ends (its separator included), in order. A
    separator is looked for again only once the cut has passed where it was found, so one
    the stream never uses costs one scan of ``buf``, not one per event (which made a
    128 KiB read of small events take a second)."""
    after = {sep: buf.find(sep) for sep in _SEPARATORS}  # where each is next; -1: no more
    start = 0
    while True:
        cut, sep = -1, b""
        for candidate in _SEPARATORS:
            at = after[candidate]
            if at != -1 and at < start:
                at = after[candidate] = buf.find(candidate, start)
            if at != -1 and (cut == -1 or at < cut):
                cut, sep = at, candidate
        if cut == -1:
            return
        start = cut + len(sep)
        yield start


class EventSplitter:
    """Cuts a byte stream into complete raw events (terminator included), in order."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        events = []
        start = 0
        for end in _event_ends(buf):
            events.append(buf[start:end])
            start = end
        self._buf = buf[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes received after the last complete event."""
        return self._buf


def iter_events(data: bytes) -> Iterator[bytes]:
    """The raw events of a whole recorded stream, one at a time (what follows the last
    separator, if anything, last): a long recording is never split into a list."""
    start = 0
    for end in _event_ends(data):
        yield data[start:end]
        start = end
    if start < len(data):
        yield data[start:]


def data_value(line: bytes) -> bytes | None:
    """The value of a ``data:`` line (its end removed), one leading space dropped as the
    SSE format says; None for any other line."""
    if not line.startswith(b"data:"):
        return None
    return line[6:] if line[5:6] == b" " else line[5:]


def parse_event(raw: bytes) -> tuple[str | None, bytes | None]:
    """(event name, data) of one raw event; data lines are joined with newlines."""
    name = None
    data: list[bytes] = []
    for line in raw.splitlines():
        if (value := data_value(line)) is not None:
            data.append(value)
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    return name, b"\n".join(data) if data else None


def encode_event(payload: Any, name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + strictjson.dumps(payload) + b"\n\n"  # a caller's echoed huge number


# -- accumulation ---------------------------------------------------------------------------

_REPLACED = frozenset({"index", "type", "role", "id"})


def merge_delta(acc: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """Fold one delta into ``acc``: text is appended, objects merged, lists of indexed objects
    merged by ``index``, other lists extended, other values replaced (if not null)."""
    for key, value in delta.items():
        old = acc.get(key)
        if old is None or key in _REPLACED:
            if value is not None or key not in acc:
                acc[key] = _fresh(value)
        elif isinstance(old, str) and isinstance(value, str):
            # Let go of the dict's reference first: with ``old`` its only holder, CPython
            # grows it in place, where ``old + value`` copied the whole text once per
            # delta (100,000 deltas took 35 s, on the event loop).
            acc[key] = None
            old += value
            acc[key] = old
        elif isinstance(old, dict) and isinstance(value, dict):
            merge_delta(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            for item in value:
                slot = _indexed_slot(old, item)
                if slot is None:
                    old.append(_fresh(item))
                else:
                    merge_delta(slot, item)
        elif value is not None:
            acc[key] = _fresh(value)
    return acc


def _fresh(value: Any) -> Any:
    """A copy deep enough that later merges never modify the chunk it came from."""
    if isinstance(value, dict):
        return merge_delta({}, value)
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return value


def _indexed_slot(items: list[Any], item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict) or not isinstance(item.get("index"), int):
        return None
    for existing in items:
        if isinstance(existing, dict) and existing.get("index") == item["index"]:
            return existing
    return None


class CompletionAccumulator:
    """Folds ``chat.completion.chunk`` (or legacy ``text_completion``) chunks into the
    completion a non-streamed request would have returned, keeping every field sent."""

    def __init__(self, chat: bool = True) -> None:
        self.chat = chat
        self.top: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.done = False

    def feed(self, chunk: dict[str, Any]) -> None:
        for key, value in chunk.items():
            if key in ("choices", "obfuscation"):
                continue
            if value is not None or key not in self.top:
                self.top[key] = value
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            slot = self.choices.setdefault(
                index, {"index": index, "message": {}} if self.chat else {"index": index}
            )
            for key, value in choice.items():
                if key == "index":
                    continue
                if key == "delta" and self.chat:
                    merge_delta(slot["message"], value or {})
                elif key == "finish_reason":
                    if value is not None:
                        slot[key] = value
                else:
                    merge_delta(slot, {key: value})

    @property
    def fingerprint(self) -> str | None:
        return self.top.get("system_fingerprint")

    @property
    def complete(self) -> bool:
        """``[DONE]`` was seen and every choice finished."""
        return (
            self.done
            and bool(self.choices)
            and all(c.get("finish_reason") is not None for c in self.choices.values())
        )

    def result(self) -> dict[str, Any]:
        out = dict(self.top)
        out["object"] = "chat.completion" if self.chat else "text_completion"
        out.setdefault("system_fingerprint", None)
        choices = []
        for index in sorted(self.choices):
            choice = dict(self.choices[index])
            if self.chat:
                message = {"role": "assistant", "content": None, **choice.pop("message")}
                for call in message.get("tool_calls") or ():
                    if isinstance(call, dict):
                        call.pop("index", None)  # a stream's bookkeeping, not in a completion
                choice = {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": None,
                    **choice,
                }
            else:
                choice = {
                    "index": index,
                    "text": "",
                    "logprobs": None,
                    "finish_reason": None,
                    **choice,
                }
            choices.append(choice)
        out["choices"] = choices
        return out


# -- synthesis ------------------------------------------------------------------------------


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` cut at whitespace into pieces of about ``size`` characters; joined, equal."""
    current = ""
    for match in _PIECE.finditer(text):  # not findall: a long text is never listed whole
        current += match.group()
        if len(current) >= size:
            yield current
            current = ""
    if current or not text:
        yield current


_TOP_KEYS = ("choices", "object", "usage")
_STREAMED_TEXT = ("reasoning_content", "reasoning", "content", "refusal")


def _message_deltas(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The deltas after the opening one that rebuild ``message`` when merged in order."""
    for key in _STREAMED_TEXT:
        value = message.get(key)
        if isinstance(value, str) and value:
            for piece in pieces(value):
                yield {key: piece}
    for j, call in enumerate(message.get("tool_calls") or ()):
        function = dict(call.get("function") or {})
        arguments = function.pop("arguments", None)
        opening = {k: v for k, v in call.items() if k != "function"}
        opening.setdefault("index", j)
        yield {"tool_calls": [{**opening, "function": {**function, "arguments": ""}}]}
        if isinstance(arguments, str) and arguments:
            for piece in pieces(arguments):
                yield {
                    "tool_calls": [{"index": opening["index"], "function": {"arguments": piece}}]
                }
    for key, value in message.items():
        if key not in ("role", "tool_calls", *_STREAMED_TEXT) and value is not None:
            yield {key: value}


# The top-level fields the API repeats in every chunk, repeated here while they are small.
_CHUNK_FIELDS = frozenset(
    {"id", "object", "created", "model", "system_fingerprint", "service_tier"}
)
REPEATED_BYTES = 512  # at most this much of them in each chunk after the first


def chunk_bases(
    completion: dict[str, Any], chat: bool, include_usage: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(first, rest): the first chunk states every top-level field of ``completion`` once;
    the others only the API's chunk fields, as far as they fit in :data:`REPEATED_BYTES`.
    A client folds a field from the chunk that last named it, so nothing is lost, and the
    stream stays bounded by what was stored: a 100 KB ``model`` is sent once, not per chunk."""
    first = {k: v for k, v in completion.items() if k not in _TOP_KEYS}
    first["object"] = "chat.completion.chunk" if chat else "text_completion"
    if include_usage:
        first["usage"] = None
    budget = REPEATED_BYTES
    kept = {"object", "usage"}
    for key, value in first.items():
        if key in _CHUNK_FIELDS and key not in kept:
            size = len(key) + len(orjson.dumps(value))
            if size <= budget:
                kept.add(key)
                budget -= size
    return first, {k: v for k, v in first.items() if k in kept}


def synthesize(completion: dict[str, Any], include_usage: bool) -> bytes:
    """SSE events, ending in ``[DONE]``, that a client folds back into ``completion``."""
    return b"".join(synthesized(completion, include_usage))


def synthesized(completion: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
    """The events of :func:`synthesize` one at a time, made as they are asked for: a
    streamed hit holds one event, never the whole stream."""
    chat = completion.get("object") != "text_completion"
    first, base = chunk_bases(completion, chat, include_usage)
    choices = completion.get("choices") or []
    opened = False

    def chunk(choice_deltas: list[dict[str, Any]]) -> bytes:
        nonlocal opened
        head = base if opened else first
        opened = True
        return encode_event({**head, "choices": choice_deltas})

    if chat:
        opening = []
        for choice in choices:
            message = choice.get("message") or {}
            # Text fields open empty and grow piece by piece; null fields are stated once.
            delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": None}
            delta.update(
                (k, "" if isinstance(v, str) and k in _STREAMED_TEXT else None)
                for k, v in message.items()
                if k in _STREAMED_TEXT and (v is None or isinstance(v, str))
            )
            delta.update((k, None) for k, v in message.items() if v is None)
            opening.append(
                {
                    "index": choice.get("index", 0),
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
        yield chunk(opening)
    for choice in choices:
        index = choice.get("index", 0)
        extra = {
            k: v
            for k, v in choice.items()
            if k not in ("index", "message", "text", "logprobs", "finish_reason", "delta")
        }
        if chat:
            for delta in _message_deltas(choice.get("message") or {}):
                yield chunk(
                    [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]
                )
            yield chunk(
                [
                    {
                        "index": index,
                        "delta": {},
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": choice.get("finish_reason"),
                        **extra,
                    }
                ]
            )
        else:
            for piece in pieces(choice.get("text") or ""):
                if piece:
                    yield chunk(
                        [{"index": index, "text": piece, "logprobs": None, "finish_reason": None}]
                    )
            yield chunk(
                [
                    {
                        "index": index,
                        "text": "",
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": choice.get("finish_reason"),
                        **extra,
                    }
                ]
            )
    if include_usage:
        usage: dict[str, Any] = {"choices": [], "usage": completion.get("usage")}
        yield encode_event({**(base if opened else first), **usage})
    yield DONE
