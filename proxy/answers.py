"""What a client of a cached endpoint gets: a stored or live answer with seedproxy's
headers, as JSON or as SSE, a stream forwarded as it arrives, or a replay miss's error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from .call import Call, namespace
from .config import Settings
from .errors import ProxyError
from .fetch import Live, Tee
from .keys import cache_key, canonical_query, nearest
from .lru import Lru
from .policy import SERVER_STATE
from .registry import Registry
from .store import Entry, Store
from .urls import masked_url

log = logging.getLogger("seedproxy.pipeline")

NEAREST_SCAN = 20  # recorded requests compared when explaining a replay miss
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _length(key: object, body: bytes) -> int:
    return len(body)


class Replays(Lru[tuple[str, str | None, float, bool], bytes]):
    """The SSE bodies of streamed hits, kept by the stored entry they replay: making one
    parses the stored JSON and writes every event, which cost a streamed hit more than
    half its time. Bounded by bytes; an entry is never changed in place (another answer
    is another fingerprint or time), so a kept body is always the one it would make."""

    def __init__(self, budget: int = 8 * 1024 * 1024) -> None:
        super().__init__(budget, budget // 16, _length)

    def body(self, call: Call, entry: Entry) -> bytes:
        key = (entry.key, entry.fingerprint, entry.created, call.include_usage)
        body = self.get(key)
        if body is None:
            answer = orjson.loads(entry.body)
            body = call.endpoint.kind.replay(answer, entry.stream, call.include_usage)
            self.put(key, body)
        return body


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
        shown = fingerprint if fingerprint is not None else "null"
        headers["X-Seedproxy-Fingerprint"] = header_text(shown)
    if call.seed is not None:
        headers["X-Seedproxy-Seed"] = str(call.seed)
    return headers


def stored(call: Call, entry: Entry, now: float, replays: Replays) -> web.Response:
    """A hit: the entry as stored, or as SSE synthesized from it for a streamed request."""
    headers = our_headers(call, entry.fingerprint, "HIT")
    headers["Age"] = str(max(0, int(now - entry.created)))
    if call.stream:
        headers.update(_SSE_HEADERS)
        return web.Response(status=entry.status, body=replays.body(call, entry), headers=headers)
    headers["Content-Type"] = entry.content_type
    return web.Response(status=entry.status, body=entry.body, headers=headers)


def live(call: Call, answer: Live, label: str, shared: bool = False) -> web.Response:
    """A live answer read in full, replayed as SSE if the client asked for a stream;
    ``shared``: another request's, whose cookies are not this client's."""
    headers = our_headers(call, answer.fingerprint, label, answer.headers.copy())
    if shared:
        headers.popall("Set-Cookie", None)
    if call.stream and answer.parsed is not None:
        headers.update(_SSE_HEADERS)
        body = call.endpoint.kind.replay(answer.parsed, answer.events, call.include_usage)
        return web.Response(status=answer.status, body=body, headers=headers)
    return web.Response(status=answer.status, body=answer.body, headers=headers)


async def streamed(
    request: web.Request,
    call: Call,
    task: asyncio.Task[Live],
    tee: Tee,
    label: str,
    complete_on_disconnect: bool,
) -> web.StreamResponse:
    """Forward the upstream events to the client as soon as the fetch task has them."""
    response = None
    try:
        await tee.wait(request)
        if tee.head is None:  # the upstream did not stream: an error, or plain JSON
            return live(call, await asyncio.shield(task), label)
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


_WHY = {
    "": "runs in replay mode, so it will not call the upstream",
    "only-if-cached": "the request asked for a stored answer only (Cache-Control: "
    "only-if-cached), so the upstream was not called",
}
_HOW = {
    "": "To record it, send the request once through the proxy in record mode "
    "(seedproxy serve --mode record) with a valid API key.",
    "only-if-cached": "To record it, send it once without only-if-cached.",
}


async def replay_miss(
    call: Call, reason: str, store: Store, registry: Registry, settings: Settings
) -> ProxyError:
    """The 504 ``cache_miss`` for a request that may not go live: why, and what is nearest."""
    if reason == "refused" and call.plan.refused == SERVER_STATE:
        message = (
            f"seedproxy runs in replay mode and never calls the upstream, and this "
            f"{call.endpoint.path} request (key {call.key}) has no recording to replay: "
            f"{call.endpoint.kind.unrecorded}. Send it without that to have it recorded and "
            "replayed, or let it reach the upstream (any mode but replay)."
        )
    elif reason == "refused":
        message = (
            f"seedproxy runs in replay mode and never calls the upstream, but this "
            f"{call.endpoint.path} request (key {call.key}) needs a live answer "
            f"({call.plan.refused}). Send it without that in replay mode, or record it in "
            "record mode."
        )
    else:
        fresh = " young enough for max-age and cache.ttl" if reason == "expired" else ""
        message = (
            f"seedproxy has no recorded response{fresh} for this {call.endpoint.path} request "
            f"(key {call.key}) and {_WHY[call.plan.asked]}. "
            f"{await _nearest(call, store, registry, settings)} {_HOW[call.plan.asked]}"
        )
    return ProxyError(
        504,
        message,
        code="cache_miss",
        headers={"x-should-retry": "false", "X-Cache": "MISS", "X-Seedproxy-Key": call.key},
    )


def _own(call: Call, key: str, request: dict[str, Any], settings: Settings) -> bool:
    """Whether the recording at ``key`` of ``request`` was made with the caller's
    credential (per-key scope): its key again, with the caller's namespace and query. No
    client learns of another's recordings, prompts or field names."""
    canonical = settings.rules.canonical(request)  # the key as parse() computes it
    ns = namespace(call.client_headers, settings.cache.scope)
    query = canonical_query(call.raw_query)
    return cache_key(call.endpoint.path, query, ns, settings.upstream.base_url, canonical) == key


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
    recorded = []
    for key in list(recent)[:NEAREST_SCAN]:
        for entry in (await store.variants(key))[:1]:
            with contextlib.suppress(orjson.JSONDecodeError, ProxyError):
                request = orjson.loads(entry.request)
                if settings.cache.scope != "per-key" or _own(call, key, request, settings):
                    recorded.append((key, request))
    found = nearest(call.body, recorded, settings.rules)
    if found is None:
        return f"Nothing is recorded for model {model!r} on {path}."
    key, fields = found
    if not fields:
        return (
            f"A request with the same body is recorded (key {key}) under another "
            f"namespace, query or upstream (the key covers those too; upstream here: "
            f"{masked_url(settings.upstream.base_url)})."
        )
    shown = ", ".join(fields[:8]) + (f" and {len(fields) - 8} more" if len(fields) > 8 else "")
    return f"The nearest recorded request for model {model!r} (key {key}) differs in: {shown}."
