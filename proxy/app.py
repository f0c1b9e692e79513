"""create_app(settings): routes and the resources that live as long as the app."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import dashboard, heap, human, reports
from .browser import Guard
from .call import (
    ENDPOINTS,
    Endpoint,
    client_seed_mode,
    endpoint_for,
    json_object,
    namespace,
    on_loop,
    read_body,
)
from .config import Settings, upstream_credential
from .errors import ProxyError, error_response
from .health import unavailable
from .keys import Where
from .observe import COUNTERS, Counters, Metrics, flush_logs
from .passthrough import forward
from .pipeline import Pipeline
from .policy import SEED_MODE_HEADER
from .scope import BASIC, BEARER, authorization, event_owner
from .store import Store, StoreError, open_store
from .traffic import Traffic
from .upstream import Upstream
from .urls import masked_url
from .writes import WriteWatch

log = logging.getLogger("seedproxy")

SETTINGS = web.AppKey("settings", Settings)
COUNTS = web.AppKey("counters", Counters)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", Store)
UPSTREAM = web.AppKey("upstream", Upstream)
PIPELINE = web.AppKey("pipeline", Pipeline)
TOKENS = web.AppKey("tokens", tuple)
GUARD = web.AppKey("guard", Guard)
WRITES = web.AppKey("writes", WriteWatch)
ADMIN_PAGES = ("/_seedproxy", "/metrics")  # what a person may open in a browser

FLUSH_INTERVAL = 1.0
HEALTH_PING = 1.0  # seconds /healthz waits for the store before calling it unavailable
DASHBOARD_EVENTS = 20
DRIFT_PAGE = 1000  # events per kind at most in one /_seedproxy/drift answer
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
            _check_browser(request)
            if request.app[TOKENS] and request.path != "/healthz":
                _check_token(request)
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


FRAME_ANCESTORS = "frame-ancestors 'none'"


def unframed(headers: MutableMapping[str, str]) -> None:
    """Forbid every site to frame the page (clickjacking: a decoy page over the dashboard,
    which the user's browser opens with its Basic credentials): ``X-Frame-Options`` for
    old browsers, CSP ``frame-ancestors`` for the rest, replacing any such directive of a
    policy the page already has and keeping its others."""
    headers["X-Frame-Options"] = "DENY"
    kept = [
        directive.strip()
        for directive in headers.get("Content-Security-Policy", "").split(";")
        if directive.strip() and directive.split()[0].lower() != "frame-ancestors"
    ]
    headers["Content-Security-Policy"] = "; ".join([*kept, FRAME_ANCESTORS])


async def _answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send ``response`` now and close the connection once it is out: a body that did not
    arrive in time is not waited for any longer (aiohttp would linger up to 10 s reading
    it), nor would what is left of it be read as the next request."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()


def _check_browser(request: web.Request) -> None:
    """What a web page must not do through a proxy it can reach (see proxy.browser)."""
    guard, host = request.app[GUARD], request.headers.get("Host")
    if guard.refused_host(host):
        raise ProxyError(
            403,
            f"Host {human.terminal_safe(host or '')[:100]!r} is not a name of this proxy: bound to "
            "loopback, it answers loopback names only (add others to server.allowed_hosts); "
            "a web page using DNS rebinding sends such requests.",
            code="host_not_allowed",
        )
    if guard.refused_origin(request.headers.get("Origin"), host):
        raise ProxyError(
            403,
            "Requests from web pages of other origins are refused (list an origin in "
            "server.cors_origins to allow it).",
            code="origin_not_allowed",
        )


def _check_token(request: web.Request) -> None:
    """``Authorization: Bearer <token>``; on the admin pages a browser's Basic auth too
    (any user name, the token as password), so a person can open the dashboard."""
    scheme, token = authorization(request.headers)
    page = request.method == "GET" and request.path.startswith(ADMIN_PAGES)
    ok = False
    for candidate in request.app[TOKENS]:  # no early exit: timing does not tell which matched
        ok |= hmac.compare_digest(token, candidate.encode())
    if not (scheme == BEARER or (scheme == BASIC and page)) or not ok:
        raise ProxyError(
            401,
            "Missing or invalid proxy token: send "
            "'Authorization: Bearer <token>' with a token from auth.tokens.",
            code="invalid_proxy_token",
            headers={"WWW-Authenticate": 'Basic realm="seedproxy", charset="UTF-8"'}
            if page
            else None,
        )


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


async def _flush_counters(app: web.Application) -> None:
    try:
        await app[COUNTS].flush(app[STORE].add_counters)
    except StoreError as exc:  # counted again with the next flush
        app[PIPELINE].health.failed(exc)
    except Exception:
        log.exception("could not flush counters")


async def _flusher(app: web.Application) -> None:
    """Once a second: registry updates, counters, log lines and store housekeeping. A step
    that fails runs again next time (a store outage is reported once, by the pipeline's
    health); the flusher itself never stops."""
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        pipeline = app[PIPELINE]
        for step in (
            pipeline.flush,
            functools.partial(_flush_counters, app),
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
    flusher = asyncio.create_task(_flusher(app))
    try:
        yield
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await pipeline.close()
        await _flush_counters(app)
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
    if request.app[PIPELINE].mode == "replay":  # offline means offline, whatever the path
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


async def _healthz(request: web.Request) -> web.Response:
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


async def _stats(request: web.Request) -> web.Response:
    pipeline = request.app[PIPELINE]
    await pipeline.flush()
    await _flush_counters(request.app)
    try:
        data = await reports.stats(request.app[STORE], request.app[SETTINGS])
    except StoreError as exc:  # what this process counted, and why that is all
        pipeline.health.failed(exc)
        data = {name: request.app[COUNTS].total[name] for name in COUNTERS}
        data["scope"] = "this process (the store holds the totals)"
    data.update(pipeline.health.report())
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def _drift(request: web.Request) -> web.Response:
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


async def _explain(request: web.Request) -> web.Response:
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


async def _dashboard(request: web.Request) -> web.Response:
    store, settings = request.app[STORE], request.app[SETTINGS]
    await request.app[PIPELINE].flush()
    await _flush_counters(request.app)
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
    # drawing diffs costs more than linearly in their size: off the loop, which serves on
    html = await asyncio.get_running_loop().run_in_executor(None, render)
    return web.Response(text=html, content_type="text/html")


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    entries, volume = await request.app[STORE].size()
    metrics.entries.set(entries)
    metrics.bytes.set(volume)
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
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
        ("GET", "/healthz", _healthz),
        ("GET", "/_seedproxy/stats", _stats),
        ("GET", "/_seedproxy/drift", _drift),
        ("POST", "/_seedproxy/explain", _explain),
        ("GET", "/_seedproxy/", _dashboard),
        ("GET", "/_seedproxy", _dashboard),
        ("GET", "/metrics", _metrics),
        *(("POST", endpoint.path, _cached(endpoint)) for endpoint in ENDPOINTS),
        ("*", "/v1/{tail:.*}", _passthrough),
    ]
    for method, path, handler in routes:
        route = path.replace("{tail:.*}", "{tail}")  # its canonical form, as metrics show it
        app.router.add_route(method, path, _answering(handler, route, writes))
    app.router.add_route("*", "/{unrouted:.*}", _answering(_unrouted, "unmatched", writes))
    return app
