"""The request guard every route answers through: the browser checks (Host, Origin; see
proxy.browser), the proxy token, and admin pages never framed."""

from __future__ import annotations

import hmac
from collections.abc import MutableMapping

from aiohttp import web

from . import human
from .appstate import GUARD, TOKENS
from .errors import ProxyError
from .scope import BASIC, BEARER, authorization

ADMIN_PAGES = ("/_seedproxy", "/metrics")  # what a person may open in a browser

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


def check_browser(request: web.Request) -> None:
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


def check_token(request: web.Request) -> None:
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
