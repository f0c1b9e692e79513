"""What differs between the cached endpoints' answers: how a stream is folded and replayed,
where usage is, how outputs are compared, which requests depend on server state. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson

from . import drift, logprobs
from .config import CacheSettings
from .redact import Redactor
from .sse import (
    CompletionAccumulator,
    encode_event,
    iter_events,
    parse_event,
    pieces,
    synthesized,
)

# The caller's copy of an answer object (its echoed fields the caller's own; see echoes.py).
Echo = Callable[[dict[str, Any]], dict[str, Any]]


def same(answer: dict[str, Any]) -> dict[str, Any]:
    """The :data:`Echo` of a client's own answer."""
    return answer


class StreamFold(Protocol):
    """Folds one endpoint's SSE events into the answer a non-streamed request gets."""

    @property
    def fingerprint(self) -> str | None: ...

    def feed(self, name: str | None, payload: bytes) -> str | None:
        """Take one event's data; return a problem that makes the stream unfit to store."""
        ...

    def final_event(self, name: str | None, payload: bytes | None) -> bool:
        """Whether this is the closing event, held back until the answer is stored."""
        ...

    @property
    def complete(self) -> bool: ...

    def result(self) -> dict[str, Any]: ...


def _json_event(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, "the upstream sent an event that is not JSON"
    if not isinstance(data, dict):
        return None, "the upstream sent an event that is not a JSON object"
    if data.get("error") is not None:
        err = data["error"]
        message = err.get("message") if isinstance(err, dict) else err
        return None, f"the upstream reported an error mid-stream: {message}"
    return data, None


def fingerprint_of(value: Any) -> str | None:
    """A ``system_fingerprint`` as entries and the registry keep it: a string or null as
    sent, any other JSON value as its JSON text, so an odd upstream value never makes an
    entry that cannot be served (the stored body keeps the value as it came)."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class CompletionFold:
    """``chat.completion.chunk`` / ``text_completion`` events, closed by ``data: [DONE]``."""

    def __init__(self, chat: bool) -> None:
        self.acc = CompletionAccumulator(chat)

    @property
    def fingerprint(self) -> str | None:
        return fingerprint_of(self.acc.fingerprint)

    def feed(self, name: str | None, payload: bytes) -> str | None:
        if payload.strip() == b"[DONE]":
            self.acc.done = True
            return None
        chunk, problem = _json_event(payload)
        if chunk is not None:
            self.acc.feed(chunk)
        return problem

    def final_event(self, name: str | None, payload: bytes | None) -> bool:
        return payload is not None and payload.strip() == b"[DONE]"

    @property
    def complete(self) -> bool:
        return self.acc.complete

    def result(self) -> dict[str, Any]:
        return self.acc.result()


class ResponseFold:
    """Responses API typed events; the answer is ``response.completed``'s response."""

    fingerprint: str | None = None  # the Responses API names none

    def __init__(self) -> None:
        self.response: dict[str, Any] | None = None

    def feed(self, name: str | None, payload: bytes) -> str | None:
        event, problem = _json_event(payload)
        if event is None:
            return problem
        kind = event.get("type", name)
        if kind == "response.completed" and isinstance(event.get("response"), dict):
            self.response = event["response"]
        elif kind in ("response.failed", "response.incomplete", "error"):
            return f"the upstream stream ended with {kind}"
        return None

    def final_event(self, name: str | None, payload: bytes | None) -> bool:
        return name == "response.completed" or (
            name is None and payload is not None and b'"response.completed"' in payload[:64]
        )

    @property
    def complete(self) -> bool:
        return self.response is not None

    def result(self) -> dict[str, Any]:
        assert self.response is not None
        return self.response


class Kind:
    """Chat completions; the other kinds override what differs."""

    name = "chat"
    fingerprinted = True  # answers carry system_fingerprint
    streams = True
    keeps_events = False  # streamed hits are synthesized, not replayed verbatim
    usage_fields: tuple[str, str | None] = ("prompt_tokens", "completion_tokens")
    outputs = staticmethod(drift.outputs)  # what an answer said, for drift
    answer_field = "choices"  # the list every answer of the endpoint has
    unrecorded = ""  # why a stateful() request's answer is not in any recording
    # Top-level answer fields that repeat a request field (the API's documented echoes).
    echoed: frozenset[str] = frozenset({"metadata"})

    def is_answer(self, answer: dict[str, Any]) -> bool:
        """Whether a 2xx body is an answer of this endpoint (not ``{}``, not an error
        object), so fit to store."""
        return isinstance(answer.get(self.answer_field), list) and answer.get("error") is None

    def stateful(self, body: dict[str, Any]) -> bool:
        """Whether the answer is kept by the server to be fetched later (what
        :attr:`unrecorded` says), so it is never recorded."""
        return False

    def per_occurrence(self, body: dict[str, Any]) -> bool:
        """Whether identical requests may rightly get different answers because the server
        state they name grows with each (a conversation): the n-th is then recorded and
        replayed as the n-th, as with ``cache.repeat = "sequence"``."""
        return False

    def fold(self) -> StreamFold:
        return CompletionFold(chat=True)

    def synthesized(self, answer: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
        """The events of a stream that folds back into ``answer``, made one at a time."""
        return synthesized(answer, include_usage)

    def replay(
        self, answer: dict[str, Any], events: bytes, include_usage: bool, echo: Echo = same
    ) -> Iterator[bytes]:
        """The SSE events of a streamed hit, one at a time: ``events`` as recorded if this
        kind keeps them, else synthesized; every answer object in them passed through
        ``echo``."""
        return self.synthesized(echo(answer), include_usage)

    def usage(self, answer: dict[str, Any]) -> tuple[int, int]:
        """(prompt, completion) tokens, from the fields this kind reports them in."""
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return 0, 0
        prompt, completion = self.usage_fields
        return _int(usage.get(prompt)), _int(usage.get(completion)) if completion else 0

    def compare(
        self, cached: dict[str, Any], live: dict[str, Any], settings: CacheSettings
    ) -> drift.Comparison | None:
        return drift.compare(self.outputs(cached), self.outputs(live))


class CompletionKind(Kind):
    name = "completion"
    echoed = frozenset()

    def fold(self) -> StreamFold:
        return CompletionFold(chat=False)


class EmbeddingKind(Kind):
    name = "embedding"
    fingerprinted = False
    streams = False
    usage_fields = ("prompt_tokens", None)
    answer_field = "data"
    echoed = frozenset()

    def compare(
        self, cached: dict[str, Any], live: dict[str, Any], settings: CacheSettings
    ) -> drift.Comparison | None:
        return drift.compare_embeddings(cached, live, settings.embedding_tolerance)


class ResponseKind(Kind):
    name = "response"
    fingerprinted = False
    keeps_events = True
    usage_fields = ("input_tokens", "output_tokens")
    outputs = staticmethod(drift.response_outputs)
    answer_field = "output"
    unrecorded = (
        "a background response (background: true) is kept by the server and fetched "
        "later by its id, so seedproxy never records one"
    )
    # The request fields a Response object repeats as sent (not ``model`` or
    # ``service_tier``, which say what served it).
    echoed = frozenset(
        {
            "background",
            "conversation",
            "instructions",
            "max_output_tokens",
            "max_tool_calls",
            "metadata",
            "parallel_tool_calls",
            "previous_response_id",
            "prompt",
            "prompt_cache_key",
            "prompt_cache_retention",
            "reasoning",
            "safety_identifier",
            "store",
            "temperature",
            "text",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "truncation",
            "user",
        }
    )

    # previous_response_id names an immutable response: the same body with the same id is
    # the same conversation, so such a request is keyed (the id included) like any other.
    def stateful(self, body: dict[str, Any]) -> bool:
        return body.get("background") is True

    def per_occurrence(self, body: dict[str, Any]) -> bool:
        return body.get("conversation") is not None

    def fold(self) -> StreamFold:
        return ResponseFold()

    def synthesized(self, answer: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
        return response_events(answer)

    def replay(
        self, answer: dict[str, Any], events: bytes, include_usage: bool, echo: Echo = same
    ) -> Iterator[bytes]:
        if not events:
            return self.synthesized(echo(answer), include_usage)
        return iter_events(events) if echo is same else _echoed(events, echo)


def _echoed(events: bytes, echo: Echo) -> Iterator[bytes]:
    """Recorded events, each response object in them (``response.created``,
    ``response.in_progress``, ``response.completed``...) passed through ``echo``."""
    for raw in iter_events(events):
        # a JSON string escapes its quotes: only a "response" key spells this
        if b'"response":' in raw:
            name, payload = parse_event(raw)
            try:
                event = orjson.loads(payload or b"")
            except orjson.JSONDecodeError:
                event = None
            if isinstance(event, dict) and isinstance(event.get("response"), dict):
                response = echo(event["response"])
                if response is not event["response"]:
                    raw = encode_event({**event, "response": response}, name)
        yield raw


def scrubbed(kind: Kind, redactor: Redactor, body: bytes, events: bytes) -> tuple[bytes, bytes]:
    """An answer's body and kept events as they may be written: redacted (its logprob
    tokens too), and when that changes either, or the stream's logprob tokens spell a
    secret joined, the events rebuilt from the redacted body. Redacting events one by
    one would leave a secret the upstream split across deltas (``"AK"``, ``"IAIOSF"``...),
    which no detector sees whole, while the done events said ``[REDACTED...]``."""
    redacted = _answer(redactor, body)
    if not events or (
        redacted is body
        and redactor.sse(events) is events
        and not logprobs.stream_spells(redactor, events)
    ):
        return redacted, events
    try:
        answer = orjson.loads(redacted)
    except orjson.JSONDecodeError:  # nothing to rebuild them from: a hit synthesizes
        return redacted, b""
    return redacted, b"".join(kind.synthesized(answer, False)) if isinstance(answer, dict) else b""


def _answer(redactor: Redactor, body: bytes) -> bytes:
    """An answer's bytes redacted, its logprob tokens too (a secret cut across them)."""
    redacted = redactor.json_bytes(body)
    if not redactor.active or not logprobs.present(redacted):
        return redacted
    try:
        answer = orjson.loads(redacted)
    except orjson.JSONDecodeError:
        return redacted
    return orjson.dumps(answer) if logprobs.scrub(answer, redactor) else redacted


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


KINDS: dict[str, Kind] = {
    k.name: k for k in (Kind(), CompletionKind(), EmbeddingKind(), ResponseKind())
}


def response_events(response: dict[str, Any]) -> Iterator[bytes]:
    """Typed Responses API events that rebuild ``response`` (for a response recorded without
    streaming and asked for as a stream)."""
    seq = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        seq += 1
        return encode_event({"type": kind, "sequence_number": seq - 1, **fields}, kind)

    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    yield event("response.created", response=opening)
    yield event("response.in_progress", response=opening)
    for oi, item in enumerate(response.get("output") or []):
        item_id = item.get("id")
        if item.get("type") == "message":
            yield event(
                "response.output_item.added",
                output_index=oi,
                item={**item, "status": "in_progress", "content": []},
            )
            for ci, part in enumerate(item.get("content") or []):
                where = {"item_id": item_id, "output_index": oi, "content_index": ci}
                ptype = part.get("type")
                text_key = "text" if ptype == "output_text" else "refusal"
                empty = {**part, text_key: ""}
                yield event("response.content_part.added", **where, part=empty)
                delta_kind = (
                    "response.output_text" if ptype == "output_text" else "response.refusal"
                )
                if ptype in ("output_text", "refusal"):
                    for piece in pieces(part.get(text_key) or ""):
                        if piece:
                            extra: dict[str, Any] = (
                                {"logprobs": []} if ptype == "output_text" else {}
                            )
                            yield event(f"{delta_kind}.delta", **where, delta=piece, **extra)
                    extra = (
                        {"logprobs": part.get("logprobs") or []} if ptype == "output_text" else {}
                    )
                    yield event(
                        f"{delta_kind}.done",
                        **where,
                        **{text_key: part.get(text_key) or ""},
                        **extra,
                    )
                yield event("response.content_part.done", **where, part=part)
        elif item.get("type") == "function_call":
            yield event(
                "response.output_item.added",
                output_index=oi,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            arguments = item.get("arguments") or ""
            for piece in pieces(arguments):
                if piece:
                    yield event(
                        "response.function_call_arguments.delta",
                        item_id=item_id,
                        output_index=oi,
                        delta=piece,
                    )
            yield event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=oi,
                arguments=arguments,
            )
        else:
            yield event("response.output_item.added", output_index=oi, item=item)
        yield event("response.output_item.done", output_index=oi, item=item)
    yield event("response.completed", response=response)
