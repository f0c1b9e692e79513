"""Every other path under ``/v1``: forwarded untouched, bodies streamed both ways."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from .errors import ProxyError
from .upstream import Upstream, forward_request_headers, forward_response_headers

log = logging.getLogger("seedproxy.passthrough")
CHUNK = 64 * 1024


async def _limited(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refusing to forward more than ``limit`` bytes."""
    seen = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise ProxyError(413, f"The request body is larger than server.max_body "
                                  f"({limit} bytes).", code="request_too_large")
        yield chunk


async def forward(request: web.Request, upstream: Upstream, raw_tail: str, max_body: int,
                  authorization: str | None) -> web.StreamResponse:
    """Send the request on as it is and stream the answer back as it arrives."""
    if request.content_length is not None and request.content_length > max_body:
        raise ProxyError(413, f"The request body is larger than server.max_body ({max_body} "
                              "bytes).", code="request_too_large")
    url = upstream.url(raw_tail, request.rel_url.raw_query_string)
    headers = forward_request_headers(request.headers, authorization)
    data = _limited(request, max_body) if request.body_exists else None
    return await relay(request, upstream, url, headers, data)


async def relay(request: web.Request, upstream: Upstream, url: URL, headers: Mapping[str, str],
                data: object, extra: Mapping[str, str] | None = None) -> web.StreamResponse:
    """Send ``request.method`` to ``url`` and stream the answer to the client as it arrives."""
    async with upstream.request(request.method, url, headers, data) as response:
        out = web.StreamResponse(status=response.status, reason=response.reason,
                                 headers=forward_response_headers(response.headers, decoded=False))
        out.headers.update(extra or {})
        if response.content_length is not None:
            out.content_length = response.content_length
        await out.prepare(request)
        try:
            async for chunk in response.content.iter_any():
                await out.write(chunk)
        except (aiohttp.ClientError, ConnectionResetError, TimeoutError) as exc:
            # Headers are sent: the only honest signal left is to cut the connection.
            log.warning("passthrough stream ended early", extra={"data": {
                "path": request.path, "error": type(exc).__name__}})
            if request.transport is not None:
                request.transport.close()
            return out
        await out.write_eof()
        return out
