"""What a client of a cached endpoint gets: a stored or live answer with seedproxy's
headers, as JSON or as SSE, a stream forwarded as it arrives, or a replay miss's error."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import socket
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from multidict import CIMultiDict

from . import strictjson
from .call import ENDPOINTS, Call, namespace
from .config import CacheSettings, Settings
from .echoes import Echoes
from .errors import ProxyError
from .fetch import Live, Tee
from .human import fingerprint as shown_fingerprint
from .keys import Where, value_at
from .kinds import Echo, Kind, same
from .lru import Lru
from .policy import SERVER_STATE, UNSEEDED
from .redact import ON_LOOP
from .registry import Registry
from .store import Entry, Store
from .urls import masked_url

log = logging.getLogger("seedproxy.pipeline")

NEAREST_SCAN = 20  # recorded requests compared when explaining a replay miss
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


# Streamed hits: entries up to SMALL stored bytes get their whole SSE body made once and
# kept (in a byte budget); larger ones are written CHUNK by CHUNK as they are made, so a
# client holds about a chunk, not the entry (nor the several times larger stream).
SMALL = 32 * 1024
CHUNK = 16 * 1024
# A large stream's socket send buffer (the kernel doubles it). Left to autotuning it grows
# to 4 MiB: each new streaming client would have that much made for it at once, on the
# loop, before a slow reader holds the writer back.
SEND_BUFFER = 128 * 1024


def _length(key: object, body: bytes) -> int:
    return len(body)


def _digest(entry: Entry) -> bytes:
    """What a stored answer replays, in 32 bytes."""
    h = hashlib.sha256(entry.body)
    h.update(b"\0")
    h.update(entry.stream)
    return h.digest()


class _Source:
    """A large stored answer being streamed, shared by the clients streaming it at once:
    each holds this and its place in it, not a copy."""

    __slots__ = ("__weakref__", "answer", "body", "events")

    def __init__(self, body: bytes, events: bytes, answer: dict[str, Any]) -> None:
        self.body, self.events, self.answer = body, events, answer


Parsing = asyncio.Future[dict[str, Any]]


def _ident(call: Call, entry: Entry) -> tuple[str, str, str | None, float]:
    return (call.endpoint.path, entry.key, entry.fingerprint, entry.created)


def _current(source: _Source, entry: Entry) -> bool:
    """Whether ``source`` is the very answer ``entry`` holds (an import may replace it)."""
    return source.body == entry.body and source.events == entry.stream


class Replays:
    """What a hit sends: stored JSON with the caller's echoes, and streamed hits' SSE. A
    small entry's SSE body is kept by the content it replays (a digest of the stored
    answer and events, the caller's echoes and include_usage), never by key and time, so
    an import, a rewrite or a refresh that changes an entry changes what streams. Bounded
    by bytes. A large entry's stream is made as it is written, from one parsed copy shared
    by the clients streaming the same content at the same time (found by entry, then
    compared byte for byte: no hashing of megabytes on the loop)."""

    def __init__(self, cache: CacheSettings, budget: int = 8 * 1024 * 1024) -> None:
        self._kept: Lru[tuple[str, bytes, bool, bytes], bytes] = Lru(budget, budget // 16, _length)
        self._shared: weakref.WeakValueDictionary[tuple[str, str, str | None, float], _Source]
        self._shared = weakref.WeakValueDictionary()
        # large entries being parsed for a stream, one parse each however many clients
        # ask at once (an entry only while its parse runs)
        self._parsing: dict[tuple[str, str, str | None, float], tuple[bytes, Parsing]] = {}
        self._echoes = {
            e.path: Echoes(e.kind.echoed, cache.ignore_fields, cache.ignore_paths)
            for e in ENDPOINTS
        }

    @property
    def held(self) -> int:
        return self._kept.held

    def json(self, call: Call, body: bytes) -> bytes:
        """A stored JSON answer as this caller gets it."""
        echoes = self._echoes[call.endpoint.path]
        if echoes.untouched(body, call.body):
            return body
        return echoes.json(body, echoes.mine(call.body))

    def unparsed(self, call: Call, entry: Entry) -> bool:
        """Whether a streamed hit on ``entry`` would parse it here: a large entry that no
        client is streaming now (the caller parses it off the loop and hands it to
        :meth:`sse`)."""
        if len(entry.body) + len(entry.stream) <= SMALL:
            return False
        if call.endpoint.kind.keeps_events and entry.stream:
            return False
        source = self._shared.get(_ident(call, entry))
        return source is None or not _current(source, entry)

    async def parsed(self, call: Call, entry: Entry) -> dict[str, Any]:
        """A large entry's answer parsed in a worker thread (its cost grows with the
        entry), once for every client that asks while the parse runs: forty clients
        streaming a 3 MB entry at once hold one parsed copy, not forty."""
        ident = _ident(call, entry)
        pending = self._parsing.get(ident)
        if pending is None or pending[0] != entry.body:  # an import may replace it
            task = asyncio.ensure_future(asyncio.to_thread(orjson.loads, entry.body))
            pending = self._parsing[ident] = (entry.body, task)
            task.add_done_callback(lambda t: self._landed(ident, t))
        return await asyncio.shield(pending[1])

    def _landed(self, ident: tuple[str, str, str | None, float], task: Parsing) -> None:
        held = self._parsing.get(ident)
        if held is not None and held[1] is task:
            del self._parsing[ident]

    def sse(
        self, call: Call, entry: Entry, parsed: dict[str, Any] | None = None
    ) -> bytes | Payload:
        """The SSE body of a streamed hit on ``entry``; ``parsed``: its answer, when the
        caller parsed it already (:meth:`unparsed`)."""
        kind, path = call.endpoint.kind, call.endpoint.path
        echoes = self._echoes[path]
        mine = echoes.mine(call.body)
        if len(entry.body) + len(entry.stream) <= SMALL:
            key = (path, _digest(entry), call.include_usage, strictjson.dumps(mine))
            body = self._kept.get(key)
            if body is None:
                answer = orjson.loads(entry.body)
                events = kind.replay(answer, entry.stream, call.include_usage, echo(echoes, mine))
                body = b"".join(events)
                self._kept.put(key, body)
            return body
        ident = _ident(call, entry)
        source = self._shared.get(ident)
        if source is None or not _current(source, entry):
            if parsed is None:
                parsed = {} if kind.keeps_events and entry.stream else orjson.loads(entry.body)
            source = self._shared[ident] = _Source(entry.body, entry.stream, parsed)
        return _streamed(source, kind, call.include_usage, echo(echoes, mine))

    def live(self, call: Call, answer: Live, own: bool) -> bytes | Payload:
        """The SSE body replaying a live answer read in full; ``own``: fetched for this
        very request, so its echoes are already the caller's."""
        echoes = self._echoes[call.endpoint.path]
        assert answer.parsed is not None
        owner = same if own else echo(echoes, echoes.mine(call.body))
        source = _Source(answer.body, answer.events, answer.parsed)
        if len(answer.body) + len(answer.events) <= SMALL:
            return b"".join(_events(source, call.endpoint.kind, call.include_usage, owner))
        return _streamed(source, call.endpoint.kind, call.include_usage, owner)


def echo(echoes: Echoes, mine: dict[str, Any]) -> Echo:
    """The :data:`Echo` giving an answer the caller's echoed fields."""
    return functools.partial(echoes.own, mine=mine) if echoes.fields else same


def _events(source: _Source, kind: Kind, include_usage: bool, owner: Echo) -> Iterator[bytes]:
    return kind.replay(source.answer, source.events, include_usage, owner)


def _streamed(source: _Source, kind: Kind, include_usage: bool, owner: Echo) -> Payload:
    return _Chunked(_events(source, kind, include_usage, owner), source)


class _Chunked(Payload):
    """A body written in chunks of about CHUNK as its events are made: aiohttp awaits
    each write's drain past 64 KiB, so a slow reader holds the writer back, and the loop
    is let go between chunks. Whatever way the writing ends (the end, a client gone, a
    connection cut for ``server.write_timeout``), the events and what they are made from
    are let go at once, not at the next garbage collection."""

    def __init__(self, events: Iterator[bytes], source: _Source) -> None:
        super().__init__(None, content_type="text/event-stream")
        self._events: Iterator[bytes] | None = events
        self._source: _Source | None = source

    async def write(self, writer: AbstractStreamWriter) -> None:
        events, source = self._events, self._source  # shared with others while written
        self._events = self._source = None
        if events is None:
            return
        pending: list[bytes] = []
        size = 0
        try:
            for event in events:
                pending.append(event)
                size += len(event)
                if size >= CHUNK:
                    chunk = b"".join(pending)
                    pending.clear()
                    size = 0
                    await writer.write(chunk)
                    await asyncio.sleep(0)
            if pending:
                await writer.write(b"".join(pending))
        finally:
            del events, pending, source

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed body is written once, never decoded")


def header_text(value: str) -> str:
    """``value`` fit for a header: anything but printable ASCII escaped (a CR/LF, NUL or
    DEL from an upstream would make aiohttp drop the connection, for every later hit)."""
    if value.isascii() and value.isprintable():
        return value
    return "".join(c if " " <= c <= "~" else f"\\u{ord(c):04x}" for c in value)


def our_headers(
    call: Call, fingerprint: str | None, label: str, headers: CIMultiDict[str] | None = None
) -> CIMultiDict[str]:
    """``headers`` (or new ones) with X-Cache and the X-Seedproxy- headers set."""
    if headers is None:
        headers = CIMultiDict()
    headers["X-Cache"] = label
    headers["X-Content-Type-Options"] = "nosniff"  # a stored answer is data, never a page
    headers["X-Seedproxy-Key"] = call.key
    if call.endpoint.kind.fingerprinted:
        headers["X-Seedproxy-Fingerprint"] = header_text(shown_fingerprint(fingerprint))
    if call.seed is not None:
        headers["X-Seedproxy-Seed"] = str(call.seed)
    return headers


async def stored(
    request: web.Request, call: Call, entry: Entry, now: float, replays: Replays
) -> web.Response:
    """A hit: the entry as stored, or as SSE synthesized from it for a streamed request,
    with the caller's echoes. A large entry's parse (for a stream, or to give it the
    caller's echoes) is done in a worker thread: its cost grows with the entry. Nothing
    here holds the entry once this returns."""
    headers = our_headers(call, entry.fingerprint, "HIT")
    headers["Age"] = str(max(0, int(now - entry.created)))
    if call.stream:
        headers.update(_SSE_HEADERS)
        parsed = None
        if replays.unparsed(call, entry):
            parsed = await replays.parsed(call, entry)
        body = replays.sse(call, entry, parsed)
        if isinstance(body, Payload):
            _modest_send_buffer(request)
        return web.Response(status=entry.status, body=body, headers=headers)
    headers["Content-Type"] = entry.content_type
    if len(entry.body) > ON_LOOP:
        body = await asyncio.to_thread(replays.json, call, entry.body)
    else:
        body = replays.json(call, entry.body)
    return web.Response(status=entry.status, body=body, headers=headers)


def _modest_send_buffer(request: web.Request) -> None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):  # a socket that has no such knob
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def live(
    call: Call, answer: Live, label: str, replays: Replays, shared: bool = False
) -> web.Response:
    """A live answer read in full, replayed as SSE if the client asked for a stream;
    ``shared``: another request's (coalesced, or stored by another process meanwhile),
    whose cookies and echoed fields are not this client's."""
    headers = our_headers(call, answer.fingerprint, label, answer.headers.copy())
    if shared:
        headers.popall("Set-Cookie", None)
    if answer.parsed is None:
        return web.Response(status=answer.status, body=answer.body, headers=headers)
    if call.stream:
        headers.update(_SSE_HEADERS)
        body = replays.live(call, answer, own=not shared)
        return web.Response(status=answer.status, body=body, headers=headers)
    body = replays.json(call, answer.body) if shared else answer.body
    return web.Response(status=answer.status, body=body, headers=headers)


async def streamed(
    request: web.Request,
    call: Call,
    task: asyncio.Task[Live],
    tee: Tee,
    label: str,
    complete_on_disconnect: bool,
    replays: Replays,
) -> web.StreamResponse:
    """Forward the upstream events to the client as soon as the fetch task has them."""
    response = None
    try:
        await tee.wait(request)
        if tee.head is None:  # the upstream did not stream: an error, or plain JSON
            answer = await asyncio.shield(task)
            return live(call, answer, label, replays, shared=answer.borrowed)
        head = tee.head
        our_headers(call, head.fingerprint, label, head.headers)
        response = web.StreamResponse(status=head.status, headers=head.headers)
        await response.prepare(request)
        while True:
            chunk = tee.take()
            if chunk:
                await response.write(chunk)
            if tee.ended:
                await response.write_eof()
                return response
            if tee.closed:
                return response
            await tee.wait(request)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        tee.gone = True
        log.info(
            "client left mid-stream",
            extra={
                "data": {
                    "key": call.key,
                    "upstream": "read to the end" if complete_on_disconnect else "cancelled",
                }
            },
        )
        if not complete_on_disconnect:
            task.cancel()
    return response or web.Response(status=499)  # nginx's "client closed request"


@dataclass(frozen=True, slots=True)
class Language:
    """How a replay miss tells its reader why the upstream was not called and how to
    record the request: a server names its own mode flag, a test session its own."""

    why: str  # "runs in replay mode, so it will not call the upstream"
    how: str  # "To record it, ..."


SERVER = Language(
    "runs in replay mode, so it will not call the upstream",
    "To record it, send the request once through the proxy in record mode "
    "(seedproxy serve --mode record) with a valid API key.",
)
ONLY_IF_CACHED = Language(
    "the request asked for a stored answer only (Cache-Control: only-if-cached), so the "
    "upstream was not called",
    "To record it, send it once without only-if-cached.",
)
SHOWN_FIELDS, SHOWN_CHARS = 8, 80  # fields a miss names, characters of each value it shows
REDACTED_CHARS = 4_096  # of a value, redacted before it is cut to SHOWN_CHARS


async def replay_miss(
    call: Call,
    reason: str,
    store: Store,
    registry: Registry,
    settings: Settings,
    language: Language = SERVER,
) -> ProxyError:
    """The 504 ``cache_miss`` for a request that may not go live: why, what is nearest,
    and how to record it in the ``language`` of whoever runs the proxy."""
    said = ONLY_IF_CACHED if call.plan.asked == "only-if-cached" else language
    offline = (
        "this request asked only-if-cached, so seedproxy does not call the upstream"
        if call.plan.asked == "only-if-cached"
        else "seedproxy runs in replay mode and never calls the upstream"
    )
    if reason == "refused" and call.plan.refused == SERVER_STATE:
        message = (
            f"{offline}, and this "
            f"{call.endpoint.path} request (key {call.key}) has no recording to replay: "
            f"{call.endpoint.kind.unrecorded}. Send it without that to have it recorded and "
            "replayed, or let it reach the upstream (any mode but replay, without only-if-cached)."
        )
    elif reason == "refused" and call.plan.refused == UNSEEDED:
        message = (
            f"{offline}, and this "
            f"{call.endpoint.path} request (key {call.key}) has no recording to replay: it "
            'has no seed while seed.mode is "require", so it is never recorded. Send it with '
            "a seed to have it recorded and replayed."
        )
    elif reason == "refused":
        message = (
            f"{offline}, but this "
            f"{call.endpoint.path} request (key {call.key}) needs a live answer "
            f"({call.plan.refused}). Send it without that in replay mode. {said.how}"
        )
    else:
        fresh = " young enough for max-age and cache.ttl" if reason == "expired" else ""
        message = (
            f"seedproxy has no recorded response{fresh} for this {call.endpoint.path} request "
            f"(key {call.key}) and {said.why}. "
            f"{await _nearest(call, store, registry, settings)} {said.how}"
        )
    return ProxyError(
        504,
        message,
        code="cache_miss",
        headers={"x-should-retry": "false", "X-Cache": "MISS", "X-Seedproxy-Key": call.key},
    )


def _recorded(
    call: Call, stored: list[tuple[str, bytes]], settings: Settings
) -> list[tuple[str, dict[str, Any]]]:
    """The recorded requests (key, body as sent upstream) a replay miss may compare with:
    in per-key scope only those made with the caller's credential, found by keying each
    again with the caller's namespace and query (no seed policy: it is applied already).
    No client learns of another's recordings, prompts or field names."""
    own = None
    if settings.cache.scope == "per-key":
        ns = namespace(call.client_headers, settings.cache.scope)
        query = settings.keyer.query(call.raw_query, live=True)  # as its key was made
        own = Where(call.endpoint.path, query, ns, "passthrough")
    recorded = []
    for key, raw in stored:
        with contextlib.suppress(orjson.JSONDecodeError, ProxyError):
            request = orjson.loads(raw)
            if (
                own is None
                or settings.keyer.key(own, call.endpoint.seeded, request, live=False).key == key
            ):
                recorded.append((key, request))
    return recorded


def _closest(
    call: Call, stored: list[tuple[str, bytes]], settings: Settings
) -> tuple[tuple[str, list[str]] | None, dict[str, Any]]:
    """The nearest of ``stored`` (see :meth:`~proxy.keys.Keyer.nearest`) and its body."""
    recorded = _recorded(call, stored, settings)
    found = settings.keyer.nearest(call.body, recorded)
    return found, dict(recorded).get(found[0], {}) if found else {}


async def _nearest(call: Call, store: Store, registry: Registry, settings: Settings) -> str:
    """Which recorded request for the same endpoint and model is closest, and how it
    differs (the way vcrpy explains a cassette miss)."""
    path, model = call.endpoint.path, call.model
    unwritten = [
        note.key
        for note in reversed(registry.unwritten())
        if note.endpoint == path and note.model == model
    ]
    recent = dict.fromkeys(unwritten + await store.recent(path, model))
    stored = [
        (key, entry.request)
        for key in list(recent)[:NEAREST_SCAN]
        for entry in (await store.variants(key))[:1]
    ]
    if not stored:  # most replay misses of an unknown model: no hop to a thread and back
        return f"Nothing is recorded for model {model!r} on {path}."
    # parsing, keying, shaping (redacting) and diffing the bodies grow with their size
    found, theirs = await asyncio.to_thread(_closest, call, stored, settings)
    if found is None:
        return f"Nothing is recorded for model {model!r} on {path}."
    key, fields = found
    if not fields:
        return (
            f"A request with the same body is recorded (key {key}) under another "
            f"namespace, query or upstream (the key covers those too; upstream here: "
            f"{masked_url(settings.upstream.base_url)})."
        )
    shown = "; ".join(
        f"{field} (recorded {_shown(theirs, field, settings)}, "
        f"sent {_shown(call.body, field, settings)})"
        for field in fields[:SHOWN_FIELDS]
    )
    more = len(fields) - SHOWN_FIELDS
    shown += f"; and {more} more" if more > 0 else ""
    return f"The nearest recorded request for model {model!r} (key {key}) differs in: {shown}."


def _shown(body: dict[str, Any], field: str, settings: Settings) -> str:
    """The value at ``field`` of a request body as JSON, secrets redacted, truncated."""
    there, found = value_at(body, field)
    if not there:
        return "nothing"
    if isinstance(found, str):  # a long prompt: only its start is shown, or dumped
        found = found[:REDACTED_CHARS]
    try:
        text = orjson.dumps(found).decode()[:REDACTED_CHARS]
    except orjson.JSONEncodeError:
        text = str(found)[:REDACTED_CHARS]
    # Redacted before it is cut, so a secret is never shown in part.
    text = settings.redactor.text(text)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
