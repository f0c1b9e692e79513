"""create_app(settings): routes, middleware and the resources that live as long as the app."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from aiohttp import web

from .config import Settings
from .errors import ProxyError, error_response
from .observe import COUNTERS, Counters
from .passthrough import forward
from .pipeline import ENDPOINTS, Endpoint, Pipeline
from .store import Store
from .store.disk import DiskStore
from .upstream import Upstream

log = logging.getLogger("seedproxy")

SETTINGS = web.AppKey("settings", Settings)
COUNTS = web.AppKey("counters", Counters)
STORE = web.AppKey("store", Store)  # type: ignore[type-abstract]
UPSTREAM = web.AppKey("upstream", Upstream)
PIPELINE = web.AppKey("pipeline", Pipeline)
TOKENS = web.AppKey("tokens", tuple)

FLUSH_INTERVAL = 1.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def open_store(settings: Settings) -> Store:
    return DiskStore(settings.cache_dir, size_limit=settings.cache.size_limit)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error the proxy answers itself is in the OpenAI shape; none is a bare 500."""
    try:
        return await handler(request)
    except ProxyError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].server.max_body
        return error_response(ProxyError(
            413, f"The request body is larger than server.max_body ({limit} bytes).",
            code="request_too_large"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: f"Unknown path {request.path!r}: seedproxy serves /v1/... , "
                        "/healthz and /_seedproxy/.",
                   405: f"Method {request.method} is not allowed on {request.path}."}
        return error_response(ProxyError(exc.status, message.get(exc.status, exc.reason),
                                         headers={k: v for k, v in exc.headers.items()
                                                  if k.lower() == "allow"}))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error", extra={"data": {"path": request.path}})
        return error_response(ProxyError(500, "seedproxy hit an internal error; see its log.",
                                         code="internal_error"))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With ``auth.tokens`` set, everything but /healthz needs ``Authorization: Bearer <t>``."""
    tokens = request.app[TOKENS]
    if tokens and request.path != "/healthz":
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        ok = False
        for candidate in tokens:  # no early exit: timing does not tell which token matched
            ok |= hmac.compare_digest(token.strip().encode(), candidate.encode())
        if scheme.lower() != "bearer" or not ok:
            raise ProxyError(401, "Missing or invalid proxy token: send "
                                  "'Authorization: Bearer <token>' with a token from auth.tokens.",
                             code="invalid_proxy_token")
    return await handler(request)


async def _flush_counters(app: web.Application) -> None:
    pending = app[COUNTS].take_pending()
    if pending:
        try:
            await app[STORE].add_counters(pending)
        except Exception:
            log.exception("could not flush counters")
            for name, n in pending.items():
                app[COUNTS].pending[name] += n


async def _flusher(app: web.Application) -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        await _flush_counters(app)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = open_store(settings)
    upstream = Upstream(settings.upstream)
    await upstream.start()
    pipeline = Pipeline(settings, store, upstream, app[COUNTS])
    if app[TOKENS]:
        key = os.environ.get(settings.upstream.api_key_env, "")
        pipeline.upstream_auth = f"Bearer {key}"
    app[STORE], app[UPSTREAM], app[PIPELINE] = store, upstream, pipeline
    flusher = asyncio.create_task(_flusher(app))
    try:
        yield
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await _flush_counters(app)
        await upstream.close()
        await store.close()


def _cached(endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await request.app[PIPELINE].handle(request, endpoint)
    return handler


async def _passthrough(request: web.Request) -> web.StreamResponse:
    raw_tail = request.raw_path.partition("?")[0][len("/v1/"):]
    return await forward(request, request.app[UPSTREAM], raw_tail,
                         request.app[SETTINGS].server.max_body, request.app[PIPELINE].upstream_auth)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, dumps=lambda o: orjson.dumps(o).decode())


async def _stats(request: web.Request) -> web.Response:
    store = request.app[STORE]
    await _flush_counters(request.app)
    counts = {name: 0 for name in COUNTERS} | await store.counters()
    entries, volume = await store.size()
    looked_up = counts["hits"] + counts["misses"] + counts["replay_misses"]
    stats = {**counts, "hit_ratio": round(counts["hits"] / looked_up, 4) if looked_up else 0.0,
             "tokens_saved": counts["prompt_tokens_saved"] + counts["completion_tokens_saved"],
             "entries": entries, "bytes": volume}
    return web.Response(body=orjson.dumps(stats), content_type="application/json")


async def _drift(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        limit = max(1, min(int(request.query.get("limit", "100")), 10_000))
    except ValueError:
        raise ProxyError(400, "limit must be an integer.", param="limit") from None
    body = {"drift": await store.events("drift", limit),
            "fingerprint_changes": await store.events("fingerprint_change", limit)}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def create_app(settings: Settings) -> web.Application:
    """The proxy as an aiohttp application; resources open and close with it."""
    app = web.Application(client_max_size=settings.server.max_body,
                          middlewares=[errors_middleware, auth_middleware])
    app[SETTINGS] = settings
    app[COUNTS] = Counters()
    app[TOKENS] = settings.proxy_tokens()
    app.cleanup_ctx.append(_resources)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/_seedproxy/stats", _stats)
    app.router.add_get("/_seedproxy/drift", _drift)
    for endpoint in ENDPOINTS:
        app.router.add_post(endpoint.path, _cached(endpoint))
    app.router.add_route("*", "/v1/{tail:.*}", _passthrough)
    return app
