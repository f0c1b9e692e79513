"""Every other path under ``/v1``: forwarded untouched, bodies streamed both ways."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from .call import body_timed_out
from .config import ServerSettings
from .errors import ProxyError
from .upstream import Upstream, forward_request_headers, forward_response_headers

log = logging.getLogger("seedproxy.passthrough")


def _too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"The request body is larger than server.max_body ({limit} bytes).",
        code="request_too_large",
    )


class _LimitedBody:
    """The request body as it arrives, refusing to forward more than ``limit`` bytes or to
    wait longer than ``timeout`` seconds for the next bytes (uploads may be large and
    slow, so the bound is on a pause, as nginx's ``client_body_timeout``)."""

    def __init__(self, request: web.Request, limit: int, timeout: float) -> None:
        self.request, self.limit, self.timeout = request, limit, timeout
        self.failure: ProxyError | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    chunk = await self.request.content.readany()
            except TimeoutError:
                self.failure = body_timed_out(self.timeout)
                raise self.failure from None
            if not chunk:
                return
            seen += len(chunk)
            if seen > self.limit:
                self.failure = _too_large(self.limit)
                raise self.failure
            yield chunk


async def forward(
    request: web.Request,
    upstream: Upstream,
    raw_tail: str,
    server: ServerSettings,
    credential: tuple[str, str] | None,
) -> web.StreamResponse:
    """Send the request on as it is and stream the answer back as it arrives."""
    if request.content_length is not None and request.content_length > server.max_body:
        raise _too_large(server.max_body)
    url = upstream.url(raw_tail, request.rel_url.raw_query_string)
    headers = forward_request_headers(request.headers, credential)
    body = (
        _LimitedBody(request, server.max_body, server.body_timeout) if request.body_exists else None
    )
    try:
        return await relay(request, upstream, url, headers, body.__aiter__() if body else None)
    except ProxyError:
        if body is not None and body.failure is not None:  # not the upstream's fault
            raise body.failure from None
        raise


async def relay(
    request: web.Request,
    upstream: Upstream,
    url: URL,
    headers: Mapping[str, str],
    data: object,
    extra: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Send ``request.method`` to ``url`` and stream the answer to the client as it arrives.
    An error answer the upstream gave to the proxy's own key is read, masked and sent whole
    (decoded, so that its text can be masked)."""
    decoded = upstream.masking
    async with upstream.request(request.method, url, headers, data, decoded) as response:
        forwarded = forward_response_headers(response.headers, decoded=decoded)
        forwarded.update(extra or {})
        if response.status >= 400 and upstream.rewrites_errors:
            body = upstream.error_body(await upstream.read_error(response))
            return web.Response(
                status=response.status, reason=response.reason, body=body, headers=forwarded
            )
        out = web.StreamResponse(status=response.status, reason=response.reason, headers=forwarded)
        if response.content_length is not None and not decoded:
            out.content_length = response.content_length
        await out.prepare(request)
        try:
            async for chunk in response.content.iter_any():
                await out.write(chunk)
        except (aiohttp.ClientError, ConnectionResetError, TimeoutError) as exc:
            # Headers are sent: the only honest signal left is to cut the connection.
            log.warning(
                "passthrough stream ended early",
                extra={"data": {"path": request.path, "error": type(exc).__name__}},
            )
            if request.transport is not None:
                request.transport.close()
            return out
        await out.write_eof()
        return out
