"""The admin handlers: /healthz, /_seedproxy/stats, /_seedproxy/drift,
/_seedproxy/explain, the dashboard and /metrics."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import dashboard, human, reports
from .appstate import COUNTS, METRICS, PIPELINE, SETTINGS, STORE, TOKENS, flush_counters
from .call import client_seed_mode, endpoint_for, json_object, namespace, on_loop, read_body
from .errors import ProxyError
from .keys import Where
from .observe import COUNTERS
from .policy import SEED_MODE_HEADER
from .scope import event_owner
from .store import StoreError
from .urls import masked_url

HEALTH_PING = 1.0  # seconds /healthz waits for the store before calling it unavailable
DASHBOARD_EVENTS = 20
DRIFT_PAGE = 1000  # events per kind at most in one /_seedproxy/drift answer


async def healthz(request: web.Request) -> web.Response:
    """200 while the proxy serves, whatever the store's state, which the body reports: an
    outage costs no request (a load balancer must not take the proxy out for it)."""
    health = request.app[PIPELINE].health
    try:
        async with asyncio.timeout(HEALTH_PING):
            await request.app[STORE].ping()
        health.ok()
    except StoreError as exc:
        health.failed(exc)
    except TimeoutError:
        health.failed(StoreError(f"no answer within {HEALTH_PING} s"))
    body = {"status": "ok", **health.report()}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    pipeline = request.app[PIPELINE]
    await pipeline.flush()
    await flush_counters(request.app)
    try:
        data = await reports.stats(request.app[STORE], request.app[SETTINGS])
    except StoreError as exc:  # what this process counted, and why that is all
        pipeline.health.failed(exc)
        data = {name: request.app[COUNTS].total[name] for name in COUNTERS}
        data["scope"] = "this process (the store holds the totals)"
    data.update(pipeline.health.report())
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def drift(request: web.Request) -> web.Response:
    """A page of each kind of event: ``offset`` and ``changes_offset`` continue where
    ``next_offset`` and ``next_changes_offset`` of the previous page point."""
    query = request.query
    try:
        limit = max(1, min(int(query.get("limit", "100")), DRIFT_PAGE))
        since = reports.parse_since(query["since"]) if "since" in query else None
        offsets = [max(0, int(query.get(name, "0"))) for name in ("offset", "changes_offset")]
    except ValueError as exc:
        raise ProxyError(400, f"Invalid query: {exc}.", code="invalid_query") from None
    store, model = request.app[STORE], query.get("model")
    await request.app[PIPELINE].flush()
    owner = _owner(request)
    drift, after = await reports.drift_page(store, model, since, limit, "drift", offsets[0], owner)
    changes, changes_after = await reports.drift_page(
        store, model, since, limit, "fingerprint_change", offsets[1]
    )
    body = {
        "drift": drift,
        "fingerprint_changes": changes,
        "next_offset": after,
        "next_changes_offset": changes_after,
    }
    text = await asyncio.to_thread(orjson.dumps, body)  # up to 8 M diff characters a kind
    return web.Response(body=text, content_type="application/json")


def _owner(request: web.Request) -> str | None:
    """In per-key scope, whose drift the caller may see: its own credential scope's."""
    return event_owner(request.headers, request.app[SETTINGS].cache.scope)


async def explain(request: web.Request) -> web.Response:
    """POST a request body: its canonical form, ignored fields, namespace and key."""
    settings = request.app[SETTINGS]
    endpoint = endpoint_for(request.query.get("path", "/v1/chat/completions"))
    raw = await read_body(request, settings.server.body_timeout, settings.server.max_body)
    header = request.headers.get(SEED_MODE_HEADER)
    mode = settings.seed.mode if header is None else client_seed_mode(header, settings)
    where = Where(
        endpoint.path,
        request.query.get("query", ""),
        namespace(request.headers, settings.cache.scope),
        mode,
    )

    def explained() -> bytes:
        info = settings.keyer.explain(where, endpoint.seeded, json_object(raw))
        info["upstream"] = masked_url(info["upstream"])
        return orjson.dumps(info)

    # parsing and walking a large body is the request parse's work: off the loop alike
    text = explained() if on_loop(raw) else await asyncio.to_thread(explained)
    return web.Response(body=text, content_type="application/json")


_PAGES = ThreadPoolExecutor(1, thread_name_prefix="seedproxy-page")  # started on first use


async def dashboard_page(request: web.Request) -> web.Response:
    store, settings = request.app[STORE], request.app[SETTINGS]
    await request.app[PIPELINE].flush()
    await flush_counters(request.app)
    render = functools.partial(
        dashboard.render,
        await reports.stats(store, settings),
        await reports.fingerprints(store),
        await reports.drift(store, limit=DASHBOARD_EVENTS, owner=_owner(request)),
        await reports.drift(store, limit=DASHBOARD_EVENTS, kind="fingerprint_change"),
        await reports.determinism(store),
        human.proxy_facts(settings, auth=bool(request.app[TOKENS])),
        dashboard.refresh_seconds(request.query.get("refresh")),
    )
    # drawing diffs costs more than linearly in their size: off the loop, which serves on,
    # and one page at a time, so that pages asked for at once queue rather than each take
    # the GIL from the loop in turn
    html = await asyncio.get_running_loop().run_in_executor(_PAGES, render)
    return web.Response(text=html, content_type="text/html")


async def metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    entries, volume = await request.app[STORE].size()
    metrics.entries.set(entries)
    metrics.bytes.set(volume)
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
