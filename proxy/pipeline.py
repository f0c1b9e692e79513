"""The cached endpoints' flow: parse the request, decide, then serve the stored answer or
go live (coalesced), store and compare. Each step is a piece of its own module."""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from . import answers, repeats
from .call import Call, Endpoint, parse
from .clock import Clock
from .config import Settings
from .fetch import Fetcher, Live, Tee
from .flight import Flights
from .health import StoreHealth, unavailable
from .memo import Memo
from .observe import Counters, DivergenceMetric
from .passthrough import relay
from .policy import (
    Action,
    Bypass,
    Discard,
    Hit,
    Miss,
    ReplayMiss,
    Sighting,
    after_fetch,
    decide,
    looks_up,
    wants_sightings,
)
from .recorder import Recorder, Verifier
from .registry import Registry
from .runmodes import CacheMode
from .scope import credential_scope
from .store import Entry, Store, StoreError
from .traffic import Traffic
from .upstream import Upstream


class Pipeline:
    """Serves the cached endpoints from the store, or from the upstream and then stores.
    ``mode`` is ``cache.mode`` unless a session (``seedproxy run``, the pytest plugin)
    sets another; ``credential`` replaces the client's upstream credential (proxy tokens)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        upstream: Upstream,
        counters: Counters,
        traffic: Traffic,
        divergence: DivergenceMetric,
        credential: tuple[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.counters = counters
        self.credential = credential
        self.mode: CacheMode = settings.cache.mode
        self.language = answers.SERVER  # how a replay miss says how to record (see Session)
        self.untouched = False  # a test session's unmarked test: as if no proxy were there
        cache = settings.cache
        self.health = StoreHealth()
        self.registry = Registry(store, counters, self.health)
        self.fetcher = Fetcher(upstream, counters, traffic)
        # Other processes use this store too: coalesce misses through it, not only here.
        shared = cache.backend == "redis" or settings.server.workers > 1
        self.flights = Flights(store, counters, traffic, self.health, cache.lock_ttl, shared)
        self.clock = Clock()  # what decides by time reads it; tests move it forward
        self.recorder = Recorder(
            cache,
            store,
            counters,
            self.registry,
            self.health,
            settings.redactor,
            divergence,
            self.clock,
        )
        self.verifier = Verifier(cache, counters, self.fetcher, self.recorder)
        self.repeats = repeats.Occurrences(settings.keyer.sequence)
        self.memo = Memo()  # a request's bytes seen before: its key without parsing
        self.replays = answers.Replays(cache)  # what hits send: echoes, streams

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        call = await parse(request, endpoint, self.settings, self.mode, self.credential, self.memo)
        counted = call.endpoint.kind.per_occurrence(call.body)
        first, n = call.key, self.repeats.next(call.key, counted)
        if n:  # a repeat is its own key, so it is neither served nor coalesced as another
            keyer = self.settings.keyer
            legacy = call.legacy and keyer.occurrence(call.legacy, n)
            call = dataclasses.replace(call, key=keyer.occurrence(first, n), legacy=legacy)
        self.counters.add("requests")
        plan, cache = call.plan, self.settings.cache
        variants: list[Entry] = []
        sightings: dict[str | None, Sighting] = {}
        now = self.clock()
        if looks_up(plan):
            try:
                variants = await self.store.variants(call.key)
                if not variants and call.legacy is not None:  # recorded before digests
                    variants = await self.store.variants(call.legacy)
                if variants and wants_sightings(
                    plan, cache.fingerprint, endpoint.kind.fingerprinted
                ):
                    sightings = await self.registry.sightings(call.model, now)
            except StoreError as exc:
                return await self._outage(request, call, exc)
            if self.health.error is not None:
                self.health.ok()
        match decide(plan, variants, sightings, now, cache):
            case Hit(entry):
                return await self._hit(request, call, entry, now)
            case ReplayMiss(reason):
                self.counters.add("replay_misses")
                error = await answers.replay_miss(
                    call, reason, self.store, self.registry, self.settings, self.language
                )
                if n:
                    recorded = await repeats.recorded(self.store, first, n)
                    note = repeats.miss_note(n, recorded, counted and not self.repeats.sequence)
                    error.message = f"{note} {error.message}"
                raise error
            case Bypass():
                self.counters.add("bypasses")
                return await self._bypass(request, call, "BYPASS")
            case Miss(reason) as miss:
                self.counters.add("refreshes" if reason == "refresh" else "misses")
                return await self._miss(request, call, variants, reason, miss.label)
        raise AssertionError("decide() returned no decision")

    async def _outage(
        self, request: web.Request, call: Call, exc: StoreError
    ) -> web.StreamResponse:
        """The store cannot be read: replay has nothing to answer with; anything else goes
        live, as a miss that is not stored."""
        self.health.failed(exc)
        if call.plan.action is Action.REPLAY:
            raise unavailable(exc)
        self.counters.add("misses")
        return await self._bypass(request, call, "MISS")

    async def _hit(
        self, request: web.Request, call: Call, entry: Entry, now: float
    ) -> web.Response:
        counters = self.counters
        counters.add("hits")
        counters.add("prompt_tokens_saved", entry.prompt_tokens)
        counters.add("completion_tokens_saved", entry.completion_tokens)
        counters.add(f"saved_prompt:{entry.model}", entry.prompt_tokens)
        counters.add(f"saved_completion:{entry.model}", entry.completion_tokens)
        self.verifier.sample(call, entry)
        return await answers.stored(request, call, entry, now, self.replays)

    async def _bypass(self, request: web.Request, call: Call, label: str) -> web.StreamResponse:
        """Live, stored nowhere; a stream is relayed byte for byte."""
        if call.stream:
            url = self.upstream.url(call.endpoint.tail, call.raw_query)
            headers = answers.our_headers(call, None, label)
            return await relay(
                request, self.upstream, url, call.headers, call.upstream_body, headers
            )
        return answers.live(call, await self.fetcher.fetch(call), label, self.replays)

    async def _miss(
        self, request: web.Request, call: Call, stored: list[Entry], reason: str, label: str
    ) -> web.StreamResponse:
        """One upstream call per key at a time; identical requests meanwhile wait for its
        answer. A client that leaves cancels neither what the others wait for nor the
        store: aiohttp lets the handler of a client that left run to its end
        (``handler_cancellation`` stays off), and a stream is fetched in a task of its own.
        Only requests with the same credential wait together, and only for an answer fit to
        store: an error answer is the caller's own, so the others go upstream themselves."""
        scope = credential_scope(call.client_headers)
        while (waiting := self.flights.joined(call.key, scope)) is not None:
            shared = await asyncio.shield(waiting)
            if shared.parsed is not None:  # an answer fit to store, redacted as a hit is
                redacted = await self.recorder.redacted(call, shared)
                return answers.live(call, redacted, label, self.replays, shared=True)

        async def go(tee: Tee | None = None) -> Live:
            live = await self.fetcher.fetch(call, tee)
            gone = tee is not None and tee.gone
            decision = after_fetch(call.plan, reason, live.outcome, gone, self.settings.cache)
            if not isinstance(decision, Discard):
                await self.recorder.record(call, live, stored, reason, decision)
            if tee is not None and tee.head is not None:
                tee.end(live.final)  # after the answer is stored
            return live

        complete = self.settings.cache.complete_on_disconnect
        if not call.stream:  # fetched in this request's task: no hop to another and back
            live = await self.flights.fly(call.key, scope, go)
            return answers.live(call, live, label, self.replays, shared=live.borrowed)
        tee = Tee()
        task = self.flights.launch(call.key, scope, lambda: go(tee))
        task.add_done_callback(lambda t: tee.close())
        return await answers.streamed(request, call, task, tee, label, complete, self.replays)

    async def flush(self) -> None:
        """Write what was gathered for the store (registry notes)."""
        await self.registry.flush()

    async def close(self) -> None:
        """Stop background verification (in-flight misses finish on their own) and write
        what was gathered for the store."""
        await self.verifier.close()
        self.recorder.close()
        await self.registry.flush()
