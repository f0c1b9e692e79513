"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
}


class ProxyError(Exception):
    """An error the proxy answers itself, carried up to the handler that renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> bytes:
    err_type = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps(
        {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    )


def error_response(exc: ProxyError, extra: Mapping[str, str] | None = None) -> web.Response:
    headers = {**exc.headers, **(extra or {})}
    return web.Response(
        status=exc.status,
        body=error_body(exc.status, exc.message, exc.code, exc.param),
        content_type="application/json",
        headers=headers,
    )
