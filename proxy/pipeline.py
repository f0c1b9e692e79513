"""The cached endpoints' flow: parse, seed, key, plan, look up, go live, compare, store."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from . import drift
from .config import Settings
from .errors import ProxyError, error_body
from .keys import cache_key, canonical_body, canonical_query, nearest
from .kinds import KINDS, Kind
from .observe import Counters
from .passthrough import relay
from .policy import (
    Action,
    Plan,
    Sighting,
    add_seed,
    apply_seed,
    is_fresh,
    merge_sightings,
    observe_sighting,
    plan_request,
    select_variant,
)
from .sse import EventSplitter, parse_event
from .store import Entry, Note, Seen, Store, StoreError
from .upstream import Upstream, forward_request_headers, forward_response_headers

log = logging.getLogger("seedproxy.pipeline")
drift_log = logging.getLogger("seedproxy.drift")

_NAMESPACE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SIGHTINGS_TTL = 1.0  # seconds a process trusts its copy of a model's fingerprint registry
_MISSING = object()
DISCONNECT_CHECK = 0.1  # seconds between looks at a waiting streaming client's connection
LOCK_POLL = 0.02  # seconds between looks for an entry another process is fetching
NEAREST_SCAN = 20  # recorded requests compared when explaining a replay miss
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A cached endpoint: its path below ``/v1/``, whether the seed policy applies, and the
    kind of answer it gives (how it streams, how its outputs are compared)."""

    tail: str
    seeded: bool
    kind: Kind

    @property
    def path(self) -> str:
        return f"/v1/{self.tail}"


ENDPOINTS = (
    Endpoint("chat/completions", seeded=True, kind=KINDS["chat"]),
    Endpoint("completions", seeded=True, kind=KINDS["completion"]),
    Endpoint("embeddings", seeded=False, kind=KINDS["embedding"]),
    Endpoint("responses", seeded=False, kind=KINDS["response"]),
)


@dataclass(frozen=True)
class Call:
    """One parsed client request, with everything the flow decides about it up front.
    What only a live request needs (its upstream body and headers) is made on first use,
    so a hit never pays for it."""

    endpoint: Endpoint
    body: dict[str, Any]
    raw: bytes  # the client's body
    seed_edit: str  # "" (the client's bytes go upstream), "added", "replaced"
    client_headers: CIMultiDictProxy[str]
    credential: tuple[str, str] | None
    key: str
    model: str
    seed: int | None
    plan: Plan
    raw_query: str

    @functools.cached_property
    def upstream_body(self) -> bytes:
        if self.seed_edit == "added":  # splice: every other byte stays the client's
            return add_seed(self.raw, self.body["seed"])
        return orjson.dumps(self.body) if self.seed_edit else self.raw

    @functools.cached_property
    def headers(self) -> CIMultiDict[str]:
        headers = forward_request_headers(self.client_headers, self.credential)
        headers["Accept-Encoding"] = "gzip, deflate"
        return headers

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True


@dataclass(frozen=True, slots=True)
class Live:
    """An upstream answer, read in full (a stream is folded into the equivalent JSON)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    parsed: dict[str, Any] | None  # the JSON object of a 2xx answer
    events: bytes = b""  # the raw events, for kinds that replay them as recorded

    @property
    def fingerprint(self) -> str | None:
        return self.parsed.get("system_fingerprint") if self.parsed is not None else None


class Sink:
    """What a fetch task hands one streaming client, in order: ("start", status, headers,
    fingerprint), ("event", raw)..., ("end", final raw event); ("done",) once the task is
    over. The client takes everything handed over so far at once."""

    def __init__(self) -> None:
        self._items: deque[tuple[Any, ...]] = deque()
        self._ready: asyncio.Future[None] | None = None

    def put(self, *item: Any) -> None:
        self._items.append(item)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    async def take(self, request: web.Request) -> list[tuple[Any, ...]]:
        """The items handed over so far, waiting for one if need be, and noticing while
        waiting that the client has gone (else that would be learnt only at the next write,
        perhaps after the whole answer)."""
        while not self._items:
            self._ready = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(DISCONNECT_CHECK):
                    await self._ready
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError("the client closed the connection") from None
        items = list(self._items)
        self._items.clear()
        return items


def seeded(endpoint: Endpoint, body: dict[str, Any], settings: Settings) -> tuple[int | None, bool]:
    """Apply the seed policy to ``body`` if ``endpoint`` takes one: (seed, body changed)."""
    if not endpoint.seeded:
        return None, False
    before = body.get("seed", _MISSING)
    seed = apply_seed(body, settings.seed.mode, settings.seed.default)
    return seed, body.get("seed", _MISSING) is not before


def endpoint_for(path: str) -> Endpoint:
    for endpoint in ENDPOINTS:
        if endpoint.path == path:
            return endpoint
    raise ProxyError(
        400,
        f"{path!r} is not a cached endpoint; one of {', '.join(e.path for e in ENDPOINTS)}.",
        param="path",
    )


Record = Callable[[Live], Awaitable[None]]


class Pipeline:
    """Serves the cached endpoints from the store, or from the upstream and then stores."""

    def __init__(
        self, settings: Settings, store: Store, upstream: Upstream, counters: Counters
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.counters = counters
        # the cache mode, per request; `seedproxy run` and the pytest plugin switch it
        self.mode: str = settings.cache.mode
        self.upstream_credential: tuple[str, str] | None = None
        self._inflight: dict[str, asyncio.Future[Live]] = {}
        self._sightings: dict[str, tuple[float, dict[str | None, Sighting]]] = {}
        self._verifying: set[asyncio.Future[None]] = set()
        self._unnoted: list[Note] = []  # gathered for the next flush_notes()
        self._noting: list[Note] = []  # being written by it
        self._note_lock = asyncio.Lock()
        self._sent: asyncio.Event | None = None  # set as a request goes upstream, if asked
        # Other processes use this store too: coalesce misses through it, not only here.
        self.shared = settings.cache.backend == "redis" or settings.server.workers > 1

    # -- request parsing -------------------------------------------------------------------

    async def read_json(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProxyError(
                400, f"The request body is not valid JSON: {exc}.", code="invalid_json"
            ) from None
        if not isinstance(body, dict):
            raise ProxyError(400, "The request body must be a JSON object.", code="invalid_json")
        return raw, body

    def namespace(self, request: web.Request) -> str:
        """The cache namespace: the ``X-Seedproxy-Namespace`` header, plus a credential hash
        when ``cache.scope = "per-key"``."""
        name = request.headers.get("X-Seedproxy-Namespace", "")
        if name and not _NAMESPACE.fullmatch(name):
            raise ProxyError(
                400,
                "Invalid X-Seedproxy-Namespace: use 1-64 of A-Z a-z 0-9 . _ -",
                code="invalid_namespace",
            )
        if self.settings.cache.scope == "per-key":
            credential = request.headers.get("Authorization") or request.headers.get("api-key", "")
            name += "|key:" + hashlib.sha256(credential.encode()).hexdigest()[:32]
        return name

    async def parse(self, request: web.Request, endpoint: Endpoint) -> Call:
        raw, body = await self.read_json(request)
        had_seed = "seed" in body
        seed, changed = seeded(endpoint, body, self.settings)
        seed_edit = ("replaced" if had_seed else "added") if changed else ""
        cache = self.settings.cache
        query = canonical_query(request.rel_url.query.items()) if request.query_string else ""
        key = cache_key(
            endpoint.path,
            query,
            self.namespace(request),
            self.settings.upstream.base_url,
            canonical_body(body, cache.ignore_fields),
        )
        model = body.get("model")
        plan = plan_request(self.mode, request.headers.get("Cache-Control"))
        if endpoint.kind.stateful(body):
            plan = Plan(Action.BYPASS)
        return Call(
            endpoint,
            body,
            raw,
            seed_edit,
            request.headers,
            self.upstream_credential,
            key,
            model if isinstance(model, str) else "",
            seed,
            plan,
            request.rel_url.raw_query_string,
        )

    # -- the flow --------------------------------------------------------------------------

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        call = await self.parse(request, endpoint)
        self.counters.add("requests")
        if call.plan.action is Action.BYPASS:
            self.counters.add("bypasses")
            if call.stream:
                url = self.upstream.url(endpoint.tail, call.raw_query)
                return await relay(
                    request,
                    self.upstream,
                    url,
                    call.headers,
                    call.upstream_body,
                    self._our_headers(call, None, "BYPASS"),
                )
            return self._respond(call, await self._go_live(call, None, None), "BYPASS")
        variants = await self.store.variants(call.key)
        now = time.time()
        if call.plan.action in (Action.RECORD, Action.REPLAY):
            replay = call.plan.action is Action.REPLAY
            chosen = await self._select(call, variants, now, replay)
            if chosen is not None and is_fresh(
                chosen.created, now, self.settings.cache.ttl, call.plan.max_age
            ):
                return self._hit(call, chosen, now)
            if replay:
                self.counters.add("replay_misses")
                raise await self._replay_miss(call)
            reason = "expired" if chosen is not None else "fingerprint"
            self.counters.add("misses")
            label = "MISS"
        else:
            reason = "refresh"
            self.counters.add("refreshes")
            label = "REFRESH"
        return await self._miss(request, call, variants, reason, label)

    async def _select(
        self, call: Call, variants: list[Entry], now: float, replay: bool
    ) -> Entry | None:
        cache = self.settings.cache
        if not variants:
            return None
        needs_registry = (
            not replay and cache.fingerprint != "any" and call.endpoint.kind.fingerprinted
        )
        sightings = await self.sightings(call.model, now) if needs_registry else {}
        return select_variant(
            variants, cache.fingerprint, sightings, cache.fingerprint_window, now, replay
        )

    async def sightings(self, model: str, now: float) -> dict[str | None, Sighting]:
        memo = self._sightings.get(model)
        if memo is not None and now - memo[0] < _SIGHTINGS_TTL:
            return memo[1]
        table = await self.store.sightings(model)
        for note in self._unwritten():  # what this process saw live and has not written yet
            if note.see and note.model == model:  # (a count may run one ahead; only the
                table = observe_sighting(table, note.fingerprint, note.now)[0]  # store's is shown)
        self._sightings[model] = (now, table)
        return table

    # -- answers ---------------------------------------------------------------------------

    def _hit(self, call: Call, entry: Entry, now: float) -> web.Response:
        self.counters.add("hits")
        self.counters.add("prompt_tokens_saved", entry.prompt_tokens)
        self.counters.add("completion_tokens_saved", entry.completion_tokens)
        self.counters.add(f"saved_prompt:{entry.model}", entry.prompt_tokens)
        self.counters.add(f"saved_completion:{entry.model}", entry.completion_tokens)
        self._maybe_verify(call, entry)
        headers = self._our_headers(call, entry.fingerprint, "HIT")
        headers["Age"] = str(max(0, int(now - entry.created)))
        if call.stream:
            headers.update(_SSE_HEADERS)
            body = call.endpoint.kind.replay(
                orjson.loads(entry.body), entry.stream, call.include_usage
            )
            return web.Response(status=entry.status, body=body, headers=headers)
        headers["Content-Type"] = entry.content_type
        return web.Response(status=entry.status, body=entry.body, headers=headers)

    def _respond(self, call: Call, live: Live, label: str) -> web.Response:
        headers = self._our_headers(call, live.fingerprint, label, live.headers.copy())
        if call.stream and live.parsed is not None:
            headers.update(_SSE_HEADERS)
            body = call.endpoint.kind.replay(live.parsed, live.events, call.include_usage)
            return web.Response(status=live.status, body=body, headers=headers)
        return web.Response(status=live.status, body=live.body, headers=headers)

    async def _replay_miss(self, call: Call) -> ProxyError:
        return ProxyError(
            504,
            f"seedproxy has no recorded response for this {call.endpoint.path} request "
            f"(key {call.key}) and runs in replay mode, so it will not call the upstream. "
            f"{await self._nearest(call)} To record it, send the request once through the "
            "proxy in record mode (seedproxy serve --mode record) with a valid API key.",
            code="cache_miss",
            headers={"x-should-retry": "false", "X-Cache": "MISS", "X-Seedproxy-Key": call.key},
        )

    async def _nearest(self, call: Call) -> str:
        """Which recorded request for the same endpoint and model is closest, and how it
        differs (the way vcrpy explains a cassette miss)."""
        recorded = []
        unwritten = [
            note.key
            for note in reversed(self._unwritten())
            if note.endpoint == call.endpoint.path and note.model == call.model
        ]
        recent = dict.fromkeys(unwritten + await self.store.recent(call.endpoint.path, call.model))
        for key in list(recent)[:NEAREST_SCAN]:
            for entry in (await self.store.variants(key))[:1]:
                with contextlib.suppress(orjson.JSONDecodeError):
                    recorded.append((key, orjson.loads(entry.request)))
        found = nearest(call.body, recorded, self.settings.cache.ignore_fields)
        if found is None:
            return f"Nothing is recorded for model {call.model!r} on {call.endpoint.path}."
        key, fields = found
        if not fields:
            return (
                f"A request with the same body is recorded (key {key}) under another "
                "namespace, query or upstream (the key covers those too; upstream here: "
                f"{self.settings.upstream.base_url})."
            )
        shown = ", ".join(fields[:8]) + (f" and {len(fields) - 8} more" if len(fields) > 8 else "")
        return (
            f"The nearest recorded request for model {call.model!r} (key {key}) differs "
            f"in: {shown}."
        )

    def _our_headers(
        self,
        call: Call,
        fingerprint: str | None,
        label: str,
        headers: CIMultiDict[str] | None = None,
    ) -> CIMultiDict[str]:
        """``headers`` (or new ones) with X-Cache and the X-Seedproxy- headers set."""
        if headers is None:
            headers = CIMultiDict()
        headers["X-Cache"] = label
        headers["X-Seedproxy-Key"] = call.key
        if call.endpoint.kind.fingerprinted:
            headers["X-Seedproxy-Fingerprint"] = fingerprint if fingerprint is not None else "null"
        if call.seed is not None:
            headers["X-Seedproxy-Seed"] = str(call.seed)
        return headers

    # -- misses ----------------------------------------------------------------------------

    async def _miss(
        self, request: web.Request, call: Call, stored: list[Entry], reason: str, label: str
    ) -> web.StreamResponse:
        """One upstream call per key at a time; identical requests meanwhile wait for its
        answer. A client that leaves cancels neither what the others wait for nor the
        store: aiohttp lets the handler of a client that left run to its end
        (``handler_cancellation`` stays off), and a stream is fetched in a task of its own."""
        waiting = self._inflight.get(call.key)
        if waiting is not None:
            self.counters.add("coalesced")
            return self._respond(call, await asyncio.shield(waiting), label)
        if not call.stream:  # fetched in this request's task: no hop to another and back
            return self._respond(call, await self._fetch(call, stored, reason), label)
        sink = Sink()
        gone = asyncio.Event()  # the client left before the end

        async def record(live: Live) -> None:
            if gone.is_set() and not self.settings.cache.complete_on_disconnect:
                return  # asked not to complete what the client abandoned
            await self._record(call, live, stored, reason)

        task = asyncio.ensure_future(self._go_live_any(call, sink, record))
        self._inflight[call.key] = task
        task.add_done_callback(lambda t: self._inflight.pop(call.key, None))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        task.add_done_callback(lambda t: sink.put("done"))
        return await self._stream_to_client(request, call, task, sink, gone, label)

    async def _fetch(self, call: Call, stored: list[Entry], reason: str) -> Live:
        """Go live and store, with a future in ``_inflight`` that identical requests await."""
        future: asyncio.Future[Live] = asyncio.get_running_loop().create_future()
        self._inflight[call.key] = future
        try:
            live = await self._go_live_any(
                call, None, lambda live: self._record(call, live, stored, reason)
            )
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: only those who wait re-raise it
            raise
        except BaseException:  # cancelled: the server is shutting down
            future.cancel()
            raise
        finally:
            del self._inflight[call.key]
        future.set_result(live)
        return live

    def _go_live_any(self, call: Call, sink: Sink | None, record: Record) -> Awaitable[Live]:
        """Go live: on a store shared with other processes, one of them per key."""
        return (
            self._go_live_once(call, sink, record)
            if self.shared
            else self._go_live(call, sink, record)
        )

    async def _go_live_once(self, call: Call, sink: Sink | None, record: Record) -> Live:
        """Across processes sharing the store, one goes upstream per key: it holds the
        key's in-flight marker (renewed while it works); the others wait for its entry,
        and go themselves if it vanishes without one (an error, or a crashed holder)."""
        ttl = self.settings.cache.lock_ttl
        token = uuid.uuid4().hex
        # what was stored before; hosts' clocks differ, so no timestamps are compared
        before = {(e.fingerprint, e.created) for e in await self.store.variants(call.key)}
        while True:
            if await self.store.lock(call.key, token, ttl):
                keeper = asyncio.ensure_future(self._keep_lock(call.key, token, ttl))
                try:
                    return await self._go_live(call, sink, record)
                finally:
                    keeper.cancel()
                    await self.store.unlock(call.key, token)
            entry = await self._await_other(call.key, before)
            if entry is not None:
                self.counters.add("coalesced")
                return Live(
                    entry.status,
                    CIMultiDict({"Content-Type": entry.content_type}),
                    entry.body,
                    orjson.loads(entry.body),
                    entry.stream,
                )

    async def _keep_lock(self, key: str, token: str, ttl: float) -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            await self.store.extend(key, token, ttl)

    async def _await_other(self, key: str, before: set[tuple[str | None, float]]) -> Entry | None:
        """The entry another process stores for ``key`` (one not in ``before``), or None
        once its marker is gone without one."""
        while True:
            held = await self.store.locked(key)  # looked at first: a holder stores, then lets go
            for entry in await self.store.variants(key):
                if (entry.fingerprint, entry.created) not in before:
                    return entry
            if not held:
                return None
            await asyncio.sleep(LOCK_POLL)

    async def _stream_to_client(
        self,
        request: web.Request,
        call: Call,
        task: asyncio.Task[Live],
        sink: Sink,
        gone: asyncio.Event,
        label: str,
    ) -> web.StreamResponse:
        """Forward the upstream events to the client as soon as the fetch task has them."""
        response = None
        try:
            items = await sink.take(request)
            if items[0][0] != "start":  # the upstream did not stream: an error, or plain JSON
                return self._respond(call, await asyncio.shield(task), label)
            _, status, headers, fingerprint = items[0]
            self._our_headers(call, fingerprint, label, headers)
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            del items[0]
            while True:
                chunk = b"".join(item[1] for item in items if item[0] != "done")
                if chunk:
                    await response.write(chunk)
                if any(item[0] == "end" for item in items):
                    await response.write_eof()
                    return response
                if any(item[0] == "done" for item in items):
                    return response
                items = await sink.take(request)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            gone.set()
            keep = self.settings.cache.complete_on_disconnect
            log.info(
                "client left mid-stream",
                extra={
                    "data": {
                        "key": call.key,
                        "upstream": "read to the end" if keep else "cancelled",
                    }
                },
            )
            if not keep:
                task.cancel()
        return response or web.Response(status=499)  # nginx's "client closed request"

    async def _go_live(self, call: Call, sink: Sink | None, record: Record | None) -> Live:
        """Call the upstream; ``record`` stores a complete 2xx answer before anyone has it."""
        url = self.upstream.url(call.endpoint.tail, call.raw_query)
        if self._sent is not None:  # set once this task has sent the request and waits
            asyncio.get_running_loop().call_soon(self._sent.set)
        async with self.upstream.request(
            "POST", url, call.headers, call.upstream_body, decompress=True, label=call.endpoint.path
        ) as response:
            headers = forward_response_headers(response.headers, decoded=True)
            if (
                200 <= response.status < 300
                and call.endpoint.kind.streams
                and response.content_type == "text/event-stream"
            ):
                return await self._consume_stream(call, response, headers, sink, record)
            body = await response.read()
        if not 200 <= response.status < 300:
            self.counters.add("upstream_errors")
            return Live(response.status, headers, body, None)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            self.counters.add("upstream_errors")
            raise ProxyError(
                502,
                "The upstream answered with a body that is not a JSON object; nothing was cached.",
                code="upstream_invalid",
            )
        live = Live(response.status, headers, body, parsed)
        if record is not None:
            await record(live)
        return live

    async def _consume_stream(
        self,
        call: Call,
        response: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        sink: Sink | None,
        record: Record | None,
    ) -> Live:
        """Read an SSE answer event by event, pass each on, fold them into one answer, and
        store it before the final event is passed on. An incomplete stream is not stored."""
        acc = call.endpoint.kind.fold()
        splitter = EventSplitter()
        events: list[bytes] = []
        started = False
        problem = None
        final = b""
        try:
            async for data in response.content.iter_any():
                unfolded = []
                for raw in splitter.feed(data):
                    name, payload = parse_event(raw)
                    if acc.final_event(name, payload):
                        final = raw  # held back until the answer is stored
                    else:
                        events.append(raw)
                        if sink is not None and not started:
                            if payload is not None:  # the first event names the fingerprint
                                problem = acc.feed(name, payload)
                            sink.put("start", response.status, headers, acc.fingerprint)
                            sink.put("event", raw)
                            started = True
                            await asyncio.sleep(0)  # on its way before the rest is looked at
                            continue
                        if sink is not None:
                            sink.put("event", raw)
                    unfolded.append((name, payload))
                if sink is not None and unfolded:
                    await asyncio.sleep(0)  # the client's task writes them before they are folded
                for name, payload in unfolded:
                    if payload is not None and problem is None:
                        problem = acc.feed(name, payload)
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"the upstream connection failed mid-stream ({type(exc).__name__})"
        if sink is not None and not started:
            sink.put("start", response.status, headers, acc.fingerprint)
        if problem is None and not acc.complete:
            problem = "the upstream stream ended before its final event"
        if problem is not None:
            self.counters.add("upstream_errors")
            log.warning(
                "incomplete upstream stream; not cached",
                extra={
                    "data": {"key": call.key, "endpoint": call.endpoint.path, "problem": problem}
                },
            )
            message = f"seedproxy: {problem}; nothing was cached."
            if sink is not None:
                sink.put(
                    "end", b"data: " + error_body(502, message, "upstream_incomplete") + b"\n\n"
                )
            raise ProxyError(502, message, code="upstream_incomplete")
        answer = acc.result()
        json_headers = headers.copy()
        json_headers["Content-Type"] = "application/json"
        kept = b"".join(events) + final if call.endpoint.kind.keeps_events else b""
        live = Live(response.status, json_headers, orjson.dumps(answer), answer, kept)
        if record is not None:
            await record(live)
        if sink is not None:
            sink.put("end", final)
        return live

    async def quiet_moment(self, wait: float = 1.0) -> None:
        """Return once a request has just gone upstream, so that work started now can end
        before its answer (at c=1, before any answer) comes; or after ``wait`` seconds."""
        sent = self._sent = asyncio.Event()
        try:
            async with asyncio.timeout(wait):
                await sent.wait()
        except TimeoutError:
            pass
        finally:
            self._sent = None

    # -- storing and comparing -------------------------------------------------------------

    def _maybe_verify(self, call: Call, entry: Entry) -> None:
        """Sample ``cache.verify_rate`` of hits for a live re-request in the background."""
        cache = self.settings.cache
        if not cache.verify_rate or random.random() >= cache.verify_rate:
            return
        if len(self._verifying) >= cache.verify_concurrency:
            self.counters.add("verify_skipped")
            return
        task = asyncio.ensure_future(self._verify(call, entry))
        self._verifying.add(task)
        task.add_done_callback(self._verifying.discard)

    async def _verify(self, call: Call, entry: Entry) -> None:
        try:
            live = await self._go_live(call, None, None)
            if live.parsed is None:
                return
            self.counters.add("verifications")
            await self._record(
                call, live, [entry], "verify", store=self.settings.cache.verify_replace
            )
        except ProxyError as exc:
            log.warning(
                "verify request failed",
                extra={"data": {"key": call.key, "status": exc.status, "error": exc.message}},
            )

    async def close(self) -> None:
        """Stop background verification (in-flight misses finish on their own) and write
        what was gathered for the store."""
        for task in list(self._verifying):
            task.cancel()
        await asyncio.gather(*self._verifying, return_exceptions=True)
        await self.flush_notes()

    async def _record(
        self, call: Call, live: Live, stored: list[Entry], reason: str, store: bool = True
    ) -> None:
        """Store a complete answer, update the registry, report changes against ``stored``."""
        assert live.parsed is not None
        now = time.time()
        prompt_tokens, completion_tokens = call.endpoint.kind.usage(live.parsed)
        entry = Entry(
            call.key,
            live.fingerprint,
            now,
            live.status,
            live.headers.get("Content-Type", "application/json"),
            call.endpoint.path,
            call.model,
            call.seed,
            prompt_tokens,
            completion_tokens,
            live.body,
            call.upstream_body,
            live.events,
        )
        # Durably stored before anyone is answered. The recent-keys index and the registry
        # are written with the next flush; this process's copy of the registry learns at once.
        if store:
            await self.store.put(entry, busy=len(self._inflight) > 1)
        fingerprinted = call.endpoint.kind.fingerprinted
        memo = self._sightings.get(call.model)
        if fingerprinted and memo is not None:
            self._sightings[call.model] = (
                memo[0],
                observe_sighting(memo[1], entry.fingerprint, now)[0],
            )
        self._unnoted.append(
            Note(entry.key, entry.endpoint, entry.model, entry.fingerprint, now, fingerprinted)
        )
        if store:
            self.counters.add("stores")
        if stored:
            await self._compare(call, stored, live.parsed, entry, reason)

    def _unwritten(self) -> list[Note]:
        return [*self._noting, *self._unnoted]

    async def flush_notes(self) -> None:
        """Write the recent-keys index and registry updates gathered since the last flush
        (once a second, and before reports, so that store reads see them): one store
        transaction instead of one per miss.
        Flushes run one at a time, so sightings are written in the order they were seen."""
        async with self._note_lock:
            if not self._unnoted:
                return
            notes = self._noting = self._unnoted
            self._unnoted = []
            try:
                results = await self.store.note(notes)
            except StoreError as exc:
                log.warning(
                    "could not update the registry",
                    extra={"data": {"notes": len(notes), "error": str(exc)}},
                )
                return
            finally:
                self._noting = []
        latest: dict[str, Seen] = {}
        for note, seen in zip(notes, results, strict=True):
            if seen is None:
                continue
            latest[note.model] = seen
            if seen.is_new:
                await self._fingerprint_changed(
                    note.model, seen.previous, note.fingerprint, note.now
                )
        for model, seen in latest.items():
            memo = self._sightings.get(model)  # may already know of later sightings
            self._sightings[model] = (
                time.time(),
                merge_sightings(seen.sightings, memo[1]) if memo is not None else seen.sightings,
            )

    async def _fingerprint_changed(
        self, model: str, previous: str | None, fingerprint: str | None, now: float
    ) -> None:
        event = drift.FingerprintChange(drift.new_id(), now, model, previous, fingerprint)
        self.counters.add("fingerprint_changes")
        drift_log.warning("fingerprint change", extra={"data": event.to_dict()})
        await self.store.add_event(event.to_dict())

    async def _compare(
        self, call: Call, stored: list[Entry], parsed: dict[str, Any], live: Entry, reason: str
    ) -> None:
        """Compare the live answer with the stored one of the same fingerprint, else the newest."""
        same = [e for e in stored if e.fingerprint == live.fingerprint]
        previous = same[0] if same else stored[0]
        try:
            cached = orjson.loads(previous.body)
        except orjson.JSONDecodeError:
            return
        result = call.endpoint.kind.compare(cached, parsed, self.settings.cache)
        if result is None:
            return
        event = drift.DriftEvent(
            drift.new_id(),
            live.created,
            reason,
            call.key,
            call.endpoint.path,
            call.model,
            call.seed,
            previous.fingerprint,
            live.fingerprint,
            previous.fingerprint == live.fingerprint,
            result.similarity,
            result.diff,
        )
        self.counters.add("drift_events")
        drift_log.warning("drift", extra={"data": event.to_dict()})
        await self.store.add_event(event.to_dict())
