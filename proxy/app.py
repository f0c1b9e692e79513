"""create_app(settings): routes and the resources that live as long as the app."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from . import admin, heap
from .appstate import (
    COUNTS,
    GUARD,
    METRICS,
    PIPELINE,
    SETTINGS,
    STORE,
    TOKENS,
    UPSTREAM,
    WRITES,
    flush_counters,
)
from .browser import Guard
from .call import ENDPOINTS, Endpoint
from .config import Settings
from .errors import ProxyError, error_response
from .guard import ADMIN_PAGES, check_browser, check_token, unframed
from .health import unavailable
from .observe import Counters, Metrics, flush_logs
from .passthrough import forward
from .pipeline import Pipeline
from .runmodes import CacheMode
from .store import Store, StoreError, open_store
from .traffic import Traffic
from .upstream import Upstream, upstream_credential
from .writes import WriteWatch

__all__ = ["COUNTS", "PIPELINE", "create_app"]

log = logging.getLogger("seedproxy")

FLUSH_INTERVAL = 1.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answering(handler: Handler, route: str, writes: WriteWatch) -> Handler:
    """What every route answers through: with ``auth.tokens``, the proxy token check
    (everything but /healthz); errors in the OpenAI shape, never a bare 500; and a count
    of every answer, errors included, by route and cache result (X-Cache); an admin page
    never framed. A wrapper per route rather than middleware, which costs every cache hit a
    few percent."""
    admin = route.startswith(ADMIN_PAGES)

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        close = False
        writes.add(request.transport)  # cut if its client stops reading what it is sent
        try:
            check_browser(request)
            if request.app[TOKENS] and request.path != "/healthz":
                check_token(request)
            response = await handler(request)
        except ProxyError as exc:
            response = error_response(exc)
            close = exc.status == 408
        except StoreError as exc:  # a page that needs the store (requests never get here)
            request.app[PIPELINE].health.failed(exc)
            response = error_response(unavailable(exc))
        except web.HTTPRequestEntityTooLarge:
            limit = request.app[SETTINGS].server.max_body
            response = error_response(
                ProxyError(
                    413,
                    f"The request body is larger than server.max_body ({limit} bytes).",
                    code="request_too_large",
                )
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = {
                404: f"Unknown path {request.path!r}: seedproxy serves /v1/... , "
                "/healthz and /_seedproxy/.",
                405: f"Method {request.method} is not allowed on {request.path}.",
            }
            response = error_response(
                ProxyError(
                    exc.status,
                    message.get(exc.status, exc.reason),
                    headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
                )
            )
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error", extra={"data": {"path": request.path}})
            response = error_response(
                ProxyError(
                    500, "seedproxy hit an internal error; see its log.", code="internal_error"
                )
            )
        if admin:
            unframed(response.headers)
        if close:
            await _answer_and_close(request, response)
        request.app[METRICS].requests[route, response.headers.get("X-Cache", "NONE")] += 1
        return response

    return answer


async def _answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send ``response`` now and close the connection once it is out: a body that did not
    arrive in time is not waited for any longer (aiohttp would linger up to 10 s reading
    it), nor would what is left of it be read as the next request."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()


async def _unrouted(request: web.Request) -> web.StreamResponse:
    """No route for this method and path: 405 with the allowed methods if the path has
    routes, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


async def _flusher(app: web.Application, stopping: asyncio.Event) -> None:
    """Once a second: registry updates, counters, log lines and store housekeeping. A step
    that fails runs again next time (a store outage is reported once, by the pipeline's
    health); the flusher runs until ``stopping`` is set. It checks that flag as well as
    being cancelled, because a cancellation that lands inside a store client may be
    swallowed there: shutting down must not then wait for it forever."""
    while not stopping.is_set():
        await asyncio.sleep(FLUSH_INTERVAL)
        pipeline = app[PIPELINE]
        for step in (
            pipeline.flush,
            functools.partial(flush_counters, app),
            app[STORE].checkpoint,
        ):
            try:
                await step()
            except StoreError as exc:
                pipeline.health.failed(exc)
            except Exception:
                log.exception("periodic store work failed")
        flush_logs()


async def _watching_writes(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[WRITES].run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    traffic = Traffic()
    # a store given to create_app: seedproxy run's and the pytest plugin's cassettes
    store = app[STORE] if STORE in app else open_store(settings, traffic)
    await store.start()
    credential = upstream_credential(settings, os.environ, app[TOKENS])
    metrics = app[METRICS]
    upstream = Upstream(settings.upstream, metrics.upstream_latency, credential)
    await upstream.start()
    pipeline = Pipeline(
        settings, store, upstream, app[COUNTS], traffic, metrics.divergence, credential
    )
    app[STORE], app[UPSTREAM], app[PIPELINE] = store, upstream, pipeline
    stopping = asyncio.Event()
    flusher = asyncio.create_task(_flusher(app, stopping))
    try:
        yield
    finally:
        stopping.set()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await pipeline.close()
        await flush_counters(app)
        flush_logs()
        await upstream.close()
        await store.close()


def _cached(endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        pipeline = request.app[PIPELINE]
        if pipeline.untouched:  # sent on as it came, nothing kept (see Pipeline)
            return await _passthrough(request)
        return await pipeline.handle(request, endpoint)

    return handler


async def _passthrough(request: web.Request) -> web.StreamResponse:
    # rel_url, not raw_path: an absolute-form target (GET http://elsewhere/v1/x) names
    # another host, which is never contacted; only its path below /v1/ is used
    raw_tail = request.rel_url.raw_path[len("/v1/") :]
    if request.app[PIPELINE].mode == CacheMode.REPLAY:  # offline means offline, whatever the path
        raise ProxyError(
            504,
            f"seedproxy runs in replay mode, so it will not call the upstream, and "
            f"{request.method} {request.path} is never recorded (only POST to "
            f"{', '.join(e.path for e in ENDPOINTS)} is).",
            code="cache_miss",
            headers={"x-should-retry": "false"},
        )
    return await forward(
        request,
        request.app[UPSTREAM],
        raw_tail,
        request.app[SETTINGS].server,
        request.app[PIPELINE].credential,
    )


def create_app(settings: Settings, store: Store | None = None) -> web.Application:
    """The proxy as an aiohttp application; resources open and close with it. ``store``
    replaces the one ``cache.backend`` names (a cassette's, in memory)."""
    heap.return_large_blocks()
    tokens = settings.proxy_tokens()
    # keepalive_timeout closes a connection still short of a request's complete headers
    # that long after it opened or was last answered (aiohttp has no separate knob)
    app = web.Application(
        client_max_size=settings.server.max_body,
        handler_args={"keepalive_timeout": settings.server.header_timeout},
    )
    app[SETTINGS] = settings
    server = settings.server
    app[GUARD] = Guard.of(server.host, server.allowed_hosts, server.cors_origins)
    if store is not None:
        app[STORE] = store
    app[COUNTS] = Counters()
    app[METRICS] = Metrics(app[COUNTS])
    app[TOKENS] = tokens
    app[WRITES] = writes = WriteWatch(server.write_timeout)
    app.cleanup_ctx.append(_resources)
    app.cleanup_ctx.append(_watching_writes)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/healthz", admin.healthz),
        ("GET", "/_seedproxy/stats", admin.stats),
        ("GET", "/_seedproxy/drift", admin.drift),
        ("POST", "/_seedproxy/explain", admin.explain),
        ("GET", "/_seedproxy/", admin.dashboard_page),
        ("GET", "/_seedproxy", admin.dashboard_page),
        ("GET", "/metrics", admin.metrics),
        *(("POST", endpoint.path, _cached(endpoint)) for endpoint in ENDPOINTS),
        ("*", "/v1/{tail:.*}", _passthrough),
    ]
    for method, path, handler in routes:
        route = path.replace("{tail:.*}", "{tail}")  # its canonical form, as metrics show it
        app.router.add_route(method, path, _answering(handler, route, writes))
    app.router.add_route("*", "/{unrouted:.*}", _answering(_unrouted, "unmatched", writes))
    return app
