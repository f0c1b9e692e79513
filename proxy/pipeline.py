"""The cached endpoints' flow: parse, seed, key, plan, look up, go live, compare, store."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from . import drift
from .config import Settings
from .errors import ProxyError
from .keys import cache_key, canonical_body, canonical_query
from .observe import Counters
from .passthrough import relay
from .policy import Action, Plan, Sighting, apply_seed, is_fresh, plan_request, select_variant
from .store import Entry, Store
from .upstream import Upstream, forward_request_headers, forward_response_headers

log = logging.getLogger("seedproxy.pipeline")
drift_log = logging.getLogger("seedproxy.drift")

_NAMESPACE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SIGHTINGS_TTL = 1.0  # seconds a process trusts its copy of a model's fingerprint registry
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A cached endpoint: its path below ``/v1/`` and whether the seed policy applies."""

    tail: str
    seeded: bool

    @property
    def path(self) -> str:
        return f"/v1/{self.tail}"


CHAT = Endpoint("chat/completions", seeded=True)


@dataclass(frozen=True, slots=True)
class Call:
    """One parsed client request, with everything the flow decides about it up front."""

    endpoint: Endpoint
    body: dict[str, Any]
    upstream_body: bytes
    headers: CIMultiDict[str]
    key: str
    model: str
    seed: int | None
    plan: Plan


@dataclass(frozen=True, slots=True)
class Live:
    """An upstream answer, read in full."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    parsed: dict[str, Any] | None  # the JSON object of a 2xx answer

    @property
    def fingerprint(self) -> str | None:
        return self.parsed.get("system_fingerprint") if self.parsed is not None else None


class Pipeline:
    """Serves the cached endpoints from the store, or from the upstream and then stores."""

    def __init__(self, settings: Settings, store: Store, upstream: Upstream,
                 counters: Counters) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.counters = counters
        self.upstream_auth: str | None = None
        self._inflight: dict[str, asyncio.Task[Live]] = {}
        self._sightings: dict[str, tuple[float, dict[str | None, Sighting]]] = {}

    # -- request parsing -------------------------------------------------------------------

    async def _read_json(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProxyError(400, f"The request body is not valid JSON: {exc}.",
                             code="invalid_json") from None
        if not isinstance(body, dict):
            raise ProxyError(400, "The request body must be a JSON object.",
                             code="invalid_json")
        return raw, body

    def namespace(self, request: web.Request) -> str:
        """The cache namespace: the ``X-Seedproxy-Namespace`` header, plus a credential hash
        when ``cache.scope = "per-key"``."""
        name = request.headers.get("X-Seedproxy-Namespace", "")
        if name and not _NAMESPACE.fullmatch(name):
            raise ProxyError(400, "Invalid X-Seedproxy-Namespace: use 1-64 of A-Z a-z 0-9 . _ -",
                             code="invalid_namespace")
        if self.settings.cache.scope == "per-key":
            credential = request.headers.get("Authorization") or request.headers.get("api-key", "")
            name += "|key:" + hashlib.sha256(credential.encode()).hexdigest()[:32]
        return name

    async def parse(self, request: web.Request, endpoint: Endpoint) -> Call:
        raw, body = await self._read_json(request)
        seed = None
        if endpoint.seeded:
            before = body.get("seed", _MISSING)
            seed = apply_seed(body, self.settings.seed.mode, self.settings.seed.default)
            if body.get("seed", _MISSING) is not before:
                raw = orjson.dumps(body)  # otherwise the client's bytes go upstream as they are
        cache = self.settings.cache
        key = cache_key(endpoint.path, canonical_query(request.rel_url.query.items()),
                        self.namespace(request), self.settings.upstream.base_url,
                        canonical_body(body, cache.ignore_fields))
        headers = forward_request_headers(request.headers, self.upstream_auth)
        headers["Accept-Encoding"] = "gzip, deflate"
        model = body.get("model")
        return Call(endpoint, body, raw, headers, key, model if isinstance(model, str) else "",
                    seed, plan_request(cache.mode, request.headers.get("Cache-Control")))

    # -- the flow --------------------------------------------------------------------------

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        call = await self.parse(request, endpoint)
        self.counters.add("requests")
        if call.body.get("stream") is True:
            # Streamed answers are relayed as they arrive and not cached yet.
            self.counters.add("bypasses")
            url = self.upstream.url(endpoint.tail, request.rel_url.raw_query_string)
            return await relay(request, self.upstream, url, call.headers, call.upstream_body,
                               self._our_headers(call, None, "BYPASS"))
        if call.plan.action is Action.BYPASS:
            self.counters.add("bypasses")
            live = await self._fetch(call, request.rel_url.raw_query_string)
            return self._live_response(call, live, "BYPASS")
        variants = await self.store.variants(call.key)
        now = time.time()
        if call.plan.action in (Action.RECORD, Action.REPLAY):
            replay = call.plan.action is Action.REPLAY
            chosen = await self._select(call, variants, now, replay)
            if chosen is not None and is_fresh(chosen.created, now, self.settings.cache.ttl,
                                               call.plan.max_age):
                return self._hit(call, chosen, now)
            if replay:
                self.counters.add("replay_misses")
                raise self._replay_miss(call)
            reason = "expired" if chosen is not None else "fingerprint"
            self.counters.add("misses")
            label = "MISS"
        else:
            reason = "refresh"
            self.counters.add("refreshes")
            label = "REFRESH"
        live = await self._coalesced(call, lambda: self._fetch_and_store(
            call, request.rel_url.raw_query_string, variants, reason))
        return self._live_response(call, live, label)

    async def _select(self, call: Call, variants: list[Entry], now: float,
                      replay: bool) -> Entry | None:
        cache = self.settings.cache
        if not variants:
            return None
        needs_registry = not replay and cache.fingerprint != "any"
        sightings = await self.sightings(call.model, now) if needs_registry else {}
        return select_variant(variants, cache.fingerprint, sightings, cache.fingerprint_window,
                              now, replay)

    async def sightings(self, model: str, now: float) -> dict[str | None, Sighting]:
        memo = self._sightings.get(model)
        if memo is not None and now - memo[0] < _SIGHTINGS_TTL:
            return memo[1]
        table = await self.store.sightings(model)
        self._sightings[model] = (now, table)
        return table

    def _hit(self, call: Call, entry: Entry, now: float) -> web.Response:
        self.counters.add("hits")
        self.counters.add("prompt_tokens_saved", entry.prompt_tokens)
        self.counters.add("completion_tokens_saved", entry.completion_tokens)
        headers = self._our_headers(call, entry.fingerprint, "HIT")
        headers["Age"] = str(max(0, int(now - entry.created)))
        headers["Content-Type"] = entry.content_type
        return web.Response(status=entry.status, body=entry.body, headers=headers)

    def _replay_miss(self, call: Call) -> ProxyError:
        return ProxyError(
            504,
            f"seedproxy has no recorded response for this {call.endpoint.path} request "
            f"(key {call.key}) and runs in replay mode, so it will not call the upstream. "
            "Record it by running the same request once with the proxy in record mode "
            "(seedproxy serve --mode record) and a valid API key. The key covers the body "
            f"(model, messages, seed, ...), the query, the namespace and the upstream "
            f"{self.settings.upstream.base_url}: replay with the upstream you recorded with.",
            code="cache_miss",
            headers={"x-should-retry": "false", "X-Cache": "MISS",
                     "X-Seedproxy-Key": call.key},
        )

    def _our_headers(self, call: Call, fingerprint: str | None, label: str) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        headers["X-Cache"] = label
        headers["X-Seedproxy-Key"] = call.key
        headers["X-Seedproxy-Fingerprint"] = fingerprint if fingerprint is not None else "null"
        if call.seed is not None:
            headers["X-Seedproxy-Seed"] = str(call.seed)
        return headers

    def _live_response(self, call: Call, live: Live, label: str) -> web.Response:
        headers = live.headers.copy()
        headers.update(self._our_headers(call, live.fingerprint, label))
        return web.Response(status=live.status, body=live.body, headers=headers)

    async def _coalesced(self, call: Call, fetch: Callable[[], Awaitable[Live]]) -> Live:
        """One upstream call per key at a time; it runs in its own task so a client that
        leaves does not cancel what the others wait for, or the store."""
        task = self._inflight.get(call.key)
        if task is None:
            task = asyncio.ensure_future(fetch())
            self._inflight[call.key] = task
            task.add_done_callback(lambda t: self._inflight.pop(call.key, None))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        else:
            self.counters.add("coalesced")
        return await asyncio.shield(task)

    async def _fetch(self, call: Call, raw_query: str) -> Live:
        url = self.upstream.url(call.endpoint.tail, raw_query)
        async with self.upstream.request("POST", url, call.headers, call.upstream_body,
                                         decompress=True) as response:
            body = await response.read()
            headers = forward_response_headers(response.headers, decoded=True)
        if not 200 <= response.status < 300:
            self.counters.add("upstream_errors")
            return Live(response.status, headers, body, None)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            self.counters.add("upstream_errors")
            raise ProxyError(502, "The upstream answered with a body that is not a JSON "
                                  "object; nothing was cached.", code="upstream_invalid")
        return Live(response.status, headers, body, parsed)

    async def _fetch_and_store(self, call: Call, raw_query: str, stored: list[Entry],
                               reason: str) -> Live:
        live = await self._fetch(call, raw_query)
        parsed = live.parsed
        if parsed is None:
            return live  # errors pass through and are never cached
        now = time.time()
        usage = parsed.get("usage") if isinstance(parsed.get("usage"), dict) else {}
        entry = Entry(call.key, live.fingerprint, now, live.status,
                      live.headers.get("Content-Type", "application/json"), call.endpoint.path,
                      call.model, call.seed, int(usage.get("prompt_tokens") or 0),
                      int(usage.get("completion_tokens") or 0), live.body, call.upstream_body)
        # Durably stored before anyone is answered; the registry is updated alongside.
        _, (previous, is_new) = await asyncio.gather(
            self.store.put(entry), self.store.see(call.model, live.fingerprint, now))
        self.counters.add("stores")
        self._sightings.pop(call.model, None)
        if is_new:
            await self._fingerprint_changed(call.model, previous, live.fingerprint, now)
        if stored:
            await self._compare(call, stored, parsed, entry, reason)
        return live

    async def _fingerprint_changed(self, model: str, previous: str | None,
                                   fingerprint: str | None, now: float) -> None:
        event = drift.FingerprintChange(drift.new_id(), now, model, previous, fingerprint)
        self.counters.add("fingerprint_changes")
        drift_log.warning("fingerprint change", extra={"data": event.to_dict()})
        await self.store.add_event(event.to_dict())

    async def _compare(self, call: Call, stored: list[Entry], parsed: dict[str, Any],
                       live: Entry, reason: str) -> None:
        """Compare the live answer with the stored one of the same fingerprint, else the newest."""
        same = [e for e in stored if e.fingerprint == live.fingerprint]
        previous = same[0] if same else stored[0]
        try:
            cached = orjson.loads(previous.body)
        except orjson.JSONDecodeError:
            return
        result = drift.compare(cached, parsed)
        if result is None:
            return
        event = drift.DriftEvent(
            drift.new_id(), live.created, reason, call.key, call.endpoint.path, call.model,
            call.seed, previous.fingerprint, live.fingerprint,
            previous.fingerprint == live.fingerprint, result.similarity, result.diff)
        self.counters.add("drift_events")
        drift_log.warning("drift", extra={"data": event.to_dict()})
        await self.store.add_event(event.to_dict())
