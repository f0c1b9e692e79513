"""The one ClientSession to the upstream: URL mapping, header hygiene, error mapping."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from urllib.parse import unquote

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import Histogram
from yarl import URL

from .config import UpstreamSettings
from .errors import ProxyError

# RFC 9110 7.6.1 hop-by-hop headers, plus those aiohttp recomputes for each leg.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
# Request headers meant for this proxy, not for the upstream.
PROXY_ONLY = frozenset({"cache-control", "x-seedproxy-namespace"})


def _dropped(headers: Mapping[str, str]) -> frozenset[str]:
    named = {h.strip().lower() for h in headers.get("Connection", "").split(",") if h.strip()}
    return HOP_BY_HOP | named


def forward_request_headers(headers: CIMultiDictProxy[str],
                            credential: tuple[str, str] | None = None) -> CIMultiDict[str]:
    """Client headers fit for the upstream; ``credential`` (header, value) replaces the
    client's own credentials."""
    drop = _dropped(headers) | PROXY_ONLY
    out = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
    if credential is not None:
        out.popall("Authorization", None)
        out.popall("api-key", None)
        out[credential[0]] = credential[1]
    return out


def forward_response_headers(headers: CIMultiDictProxy[str],
                             decoded: bool) -> CIMultiDict[str]:
    """Upstream headers fit for the client; ``decoded`` bodies lose their encoding header."""
    drop = _dropped(headers)
    if decoded:
        drop = drop | {"content-encoding"}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


class Upstream:
    """Maps ``/v1/<tail>`` onto ``upstream.base_url`` and owns the client session."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.base = URL(settings.base_url.rstrip("/"))
        self._prefix = str(self.base)
        self.settings = settings
        self.session: aiohttp.ClientSession | None = None
        self.latency: Histogram | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=self.settings.connect_timeout,
                                        sock_read=self.settings.timeout)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        # No cookie jar: a Set-Cookie belongs to the client that got it, not to every
        # request after it (and a jar's filtering would cost each call).
        self.session = aiohttp.ClientSession(timeout=timeout, connector=connector,
                                             cookie_jar=aiohttp.DummyCookieJar(),
                                             auto_decompress=False,
                                             skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def url(self, raw_tail: str, raw_query: str) -> URL:
        """The upstream URL for a raw path below ``/v1/``; the host is always the configured one.

        Dot segments (also percent-encoded) are refused so a path cannot climb above the base.
        """
        if any(unquote(seg) in (".", "..") for seg in raw_tail.split("/")):
            raise ProxyError(400, "Invalid path: '.' and '..' segments are not allowed.",
                             code="invalid_path")
        tail = raw_tail + ("?" + raw_query if raw_query else "")
        return URL(f"{self._prefix}/{tail}", encoded=True)

    @asynccontextmanager
    async def request(self, method: str, url: URL, headers: Mapping[str, str],
                      data: object = None, decompress: bool = False, label: str = "passthrough"
                      ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request; connection failures become 502 and timeouts 504 ProxyErrors.
        The time to the response headers is observed under ``label``."""
        assert self.session is not None, "Upstream.start() was not awaited"
        started = time.perf_counter()
        try:
            async with self.session.request(method, url, headers=headers, data=data,
                                             allow_redirects=False,
                                             auto_decompress=decompress) as response:
                if self.latency is not None:
                    self.latency.labels(label).observe(time.perf_counter() - started)
                yield response
        except TimeoutError:
            raise ProxyError(504, f"The upstream {self.base} did not answer in time.",
                             code="upstream_timeout") from None
        except aiohttp.ClientConnectorError as exc:
            raise ProxyError(502, f"The upstream {self.base} is unreachable: {exc.os_error}.",
                             code="upstream_unreachable") from None
        except aiohttp.ClientError as exc:
            raise ProxyError(502, f"The upstream {self.base} failed: {type(exc).__name__}.",
                             code="upstream_error") from None
