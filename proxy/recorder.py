"""Keeping live answers: storing a complete one, noting it for the registry, comparing it
with what was stored before (drift), and re-requesting a sample of hits (verify)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from . import determinism, drift
from .call import Call, on_loop
from .clock import Clock
from .config import CacheSettings
from .errors import ProxyError
from .fetch import Fetcher, Live
from .health import StoreHealth
from .kinds import Kind, scrubbed
from .observe import Counters, DivergenceMetric
from .policy import VERIFY, Discard, Keep, Recorded, after_fetch
from .redact import ON_LOOP, Redactor
from .registry import Registry
from .scope import event_owner
from .store import Entry, Note, Store, StoreError

log = logging.getLogger("seedproxy.pipeline")
drift_log = logging.getLogger("seedproxy.drift")


class Recorder:
    """Stores complete 2xx answers and reports how they differ from the stored ones.
    Secrets are redacted from everything it writes (entries, drift events, their log
    lines); the client was already answered with what the upstream sent."""

    def __init__(
        self,
        cache: CacheSettings,
        store: Store,
        counters: Counters,
        registry: Registry,
        health: StoreHealth,
        redactor: Redactor,
        divergence: DivergenceMetric,
        clock: Clock,
    ) -> None:
        self.clock = clock
        self.cache = cache
        self.store = store
        self.counters = counters
        self.registry = registry
        self.health = health
        self.redactor = redactor
        self.divergence = divergence
        # Comparing costs more than linearly in the answers' size (7 s for two 64,000
        # character answers): one thread does it, so the loop serves on meanwhile and at
        # most one core goes to it whatever the number of refreshes.
        self._compare_pool = ThreadPoolExecutor(1, thread_name_prefix="seedproxy-compare")

    def close(self) -> None:
        """Let the comparing thread end once the comparisons asked for are done."""
        self._compare_pool.shutdown(wait=False)

    async def record(
        self, call: Call, live: Live, stored: Sequence[Entry], reason: str, decision: Recorded
    ) -> None:
        """Store (if :func:`policy.after_fetch` said :class:`Keep`) a complete answer,
        note it for the registry, and compare it with ``stored``, the variants there were
        before."""
        assert live.parsed is not None
        now = self.clock()
        prompt_tokens, completion_tokens = call.endpoint.kind.usage(live.parsed)
        redactor = self.redactor
        body, events = await self._scrubbed(call, live)
        request = call.upstream_body  # live: literal placeholders as its key saw them
        if on_loop(request):  # the rule the request's parse followed
            request = redactor.json_bytes(request, live=True)
        else:
            request = await asyncio.to_thread(redactor.json_bytes, request, True)
        entry = Entry(
            call.key,
            live.fingerprint,
            now,
            live.status,
            live.headers.get("Content-Type", "application/json"),
            call.endpoint.path,
            redactor.text(call.model, live=True),
            call.seed,
            prompt_tokens,
            completion_tokens,
            body,
            request,
            events,
        )
        # Durably stored before anyone is answered. The recent-keys index and the registry
        # are written with the next flush; this process's copy of the registry learns at once.
        if isinstance(decision, Keep):
            try:
                await self.store.put(entry)
            except StoreError as exc:  # the client still gets its answer, uncached
                self.health.failed(exc)
                return
            self.health.wrote()  # what ends a write outage: caching works again
            self.counters.add("stores")
        fingerprinted = call.endpoint.kind.fingerprinted
        self.registry.note(
            Note(entry.key, entry.endpoint, entry.model, entry.fingerprint, now, fingerprinted)
        )
        if stored:  # compared as stored (parsed in the comparing thread if redacted), so a
            # diff shows no secret either
            parsed = live.parsed if entry.body is live.body else entry.body
            await self._compare(call, stored, parsed, entry, reason)

    async def _scrubbed(self, call: Call, live: Live) -> tuple[bytes, bytes]:
        """The answer's body and events redacted; in a worker thread when large."""
        kind, redactor = call.endpoint.kind, self.redactor
        if len(live.body) + len(live.events) > ON_LOOP:
            return await asyncio.to_thread(scrubbed, kind, redactor, live.body, live.events)
        return scrubbed(kind, redactor, live.body, live.events)

    async def redacted(self, call: Call, live: Live) -> Live:
        """A live answer as it would be stored: for clients other than the one whose
        request fetched it (coalesced waiters), who must not see that one's secrets."""
        body, events = await self._scrubbed(call, live)
        if body is live.body and events is live.events:
            return live
        parsed = orjson.loads(body) if live.parsed is not None else None
        return dataclasses.replace(live, body=body, parsed=parsed, events=events)

    async def _compare(
        self,
        call: Call,
        stored: Sequence[Entry],
        parsed: dict[str, Any] | bytes,
        live: Entry,
        reason: str,
    ) -> None:
        """Compare the live answer with the stored one of the same fingerprint, else the newest."""
        same = [e for e in stored if e.fingerprint == live.fingerprint]
        previous = same[0] if same else stored[0]
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._compare_pool, _measure, call.endpoint.kind, previous.body, parsed, self.cache
            )
        except orjson.JSONDecodeError:
            return
        where = None if result is None else result.divergence
        for name, n in determinism.counts(
            live.created,
            call.endpoint.path,
            live.model,
            previous.fingerprint,
            live.fingerprint,
            None if result is None else result.similarity,
            call.source,
            divergence_chars=None if where is None else where.chars,
        ).items():
            self.counters.add(name, n)
        if result is None:
            return
        event = drift.DriftEvent(
            drift.new_id(),
            live.created,
            reason,
            call.key,
            call.endpoint.path,
            live.model,
            call.seed,
            previous.fingerprint,
            live.fingerprint,
            previous.fingerprint == live.fingerprint,
            result.similarity,
            result.diff,
            owner=event_owner(call.client_headers, self.cache.scope),
            divergence_chars=None if where is None else where.chars,
            divergence_words=None if where is None else where.words,
            shared_prefix_chars=None if where is None else where.shared_prefix_chars,
            path=result.path,
        )
        self.counters.add("drift_events")
        if where is not None and call.source == "traffic":  # traffic only, as comparisons
            self.divergence.observe(live.model, where.chars)
        drift_log.warning("drift", extra={"data": event.to_dict()})
        try:
            await self.store.add_event(event.to_dict())
        except StoreError as exc:  # logged above all the same
            self.health.failed(exc)


def _measure(
    kind: Kind, cached: bytes, live: dict[str, Any] | bytes, settings: CacheSettings
) -> drift.Comparison | None:
    """How a stored answer (its bytes) and a live one (parsed, or its bytes) differ; in a
    worker thread."""
    parsed = orjson.loads(live) if isinstance(live, bytes) else live
    return kind.compare(orjson.loads(cached), parsed, settings)


class Verifier:
    """Re-requests ``rate`` of hits live in the background, at most ``concurrency`` at
    once, and records drift; whether the live answer replaces the stored one is
    :func:`policy.after_fetch`'s (``verify_replace``)."""

    def __init__(
        self, cache: CacheSettings, counters: Counters, fetcher: Fetcher, recorder: Recorder
    ) -> None:
        self.cache = cache
        self.rate = cache.verify_rate
        self.concurrency = cache.verify_concurrency
        self.counters = counters
        self.fetcher = fetcher
        self.recorder = recorder
        self._running: set[asyncio.Future[None]] = set()

    def sample(self, call: Call, entry: Entry) -> None:
        """Maybe verify this hit, never delaying it."""
        if not self.rate or random.random() >= self.rate:
            return
        if call.endpoint.kind.per_occurrence(call.body):  # asking again adds to the state
            return
        if len(self._running) >= self.concurrency:
            self.counters.add("verify_skipped")
            return
        task = asyncio.ensure_future(self._verify(call, entry))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _verify(self, call: Call, entry: Entry) -> None:
        try:
            live = await self.fetcher.fetch(call)
            decision = after_fetch(call.plan, VERIFY, live.outcome, False, self.cache)
            if isinstance(decision, Discard):
                return
            self.counters.add("verifications")
            await self.recorder.record(call, live, [entry], VERIFY, decision)
        except ProxyError as exc:
            log.warning(
                "verify request failed",
                extra={"data": {"key": call.key, "status": exc.status, "error": exc.message}},
            )

    async def close(self) -> None:
        """Stop the verifications under way."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
