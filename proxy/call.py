"""The cached endpoints, and one client request to them parsed into a :class:`Call`."""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from . import strictjson
from .browser import form_type
from .config import Settings
from .errors import ProxyError
from .keys import Where
from .kinds import KINDS, Kind
from .memo import NODES_ON_LOOP, Ident, Memo, Parsed, shape
from .policy import SEED_MODE_HEADER, Plan, add_seed, plan_request, uncached
from .policy import seed_mode as request_seed_mode
from .redact import ON_LOOP
from .runmodes import CacheMode
from .scope import credential_scope
from .upstream import forward_request_headers

_NAMESPACE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A model name becomes store keys (registry, recent keys) and is kept in memory per
# distinct name: bounded, as the namespace is. Real names are a few dozen characters.
MAX_MODEL_NAME = 256


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A cached endpoint: its path below ``/v1/``, whether the seed policy applies, and the
    kind of answer it gives (how it streams, how its outputs are compared)."""

    tail: str
    seeded: bool
    kind: Kind

    @property
    def path(self) -> str:
        return f"/v1/{self.tail}"


ENDPOINTS = (
    Endpoint("chat/completions", seeded=True, kind=KINDS["chat"]),
    Endpoint("completions", seeded=True, kind=KINDS["completion"]),
    Endpoint("embeddings", seeded=False, kind=KINDS["embedding"]),
    Endpoint("responses", seeded=False, kind=KINDS["response"]),
)


def endpoint_for(path: str) -> Endpoint:
    """The cached endpoint at ``path``; 400 naming the others when there is none."""
    for endpoint in ENDPOINTS:
        if endpoint.path == path:
            return endpoint
    raise ProxyError(
        400,
        f"{path!r} is not a cached endpoint; one of {', '.join(e.path for e in ENDPOINTS)}.",
        param="path",
    )


@dataclass(frozen=True)
class Call:
    """One parsed client request, with everything the flow decides about it up front.
    What only a live request needs (its upstream body and headers) is made on first use,
    so a hit never pays for it."""

    endpoint: Endpoint
    body: dict[str, Any]
    raw: bytes  # the client's body
    seed_edit: str  # "" (the client's bytes go upstream), "added", "replaced"
    client_headers: CIMultiDictProxy[str]
    credential: tuple[str, str] | None  # the proxy's own upstream credential, if any
    key: str
    model: str
    seed: int | None
    plan: Plan
    raw_query: str
    # whose seed policy applied, as determinism counts it: "traffic" (the operator's) or
    # "client" (X-Seedproxy-Seed-Mode), which no --fail-under gate reads
    source: str = "traffic"
    legacy: str | None = None  # the key it had before placeholders carried a digest

    @functools.cached_property
    def upstream_body(self) -> bytes:
        if self.seed_edit == "added":  # splice: every other byte stays the client's
            return add_seed(self.raw, self.body["seed"])
        return strictjson.dumps(self.body) if self.seed_edit else self.raw

    @functools.cached_property
    def headers(self) -> CIMultiDict[str]:
        headers = forward_request_headers(self.client_headers, self.credential)
        headers["Accept-Encoding"] = "gzip, deflate"
        return headers

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True


def body_timed_out(timeout: float) -> ProxyError:
    """408 for a body that did not arrive in time; the connection is then closed, as what
    is left of the body would be read as the next request."""
    return ProxyError(
        408,
        f"The request body did not arrive within server.body_timeout ({timeout:g} s).",
        code="request_timeout",
    )


async def read_body(request: web.Request, within: float, limit: int) -> bytes:
    """The request's raw body, arrived whole within ``within`` seconds (else 408), at most
    ``limit`` bytes (else 413). A body type that a cross-site HTML form can send is
    refused (415) before it is read."""
    if form_type(request.headers.get("Content-Type")):
        raise ProxyError(
            415,
            "The request body must be JSON (Content-Type: application/json); seedproxy "
            "refuses the types an HTML form on another site can send.",
            code="unsupported_media_type",
        )
    if request.content.is_eof():  # all here already (most requests): taken as it is
        raw = request.content.read_nowait()
        if len(raw) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(raw))
        return raw
    try:
        async with asyncio.timeout(within):
            return await request.read()
    except TimeoutError:
        raise body_timed_out(within) from None


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object; 400 ``invalid_json`` or ``duplicate_key`` otherwise."""
    try:
        body = strictjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProxyError(
            400, f"The request body is not valid JSON: {exc}.", code="invalid_json"
        ) from None
    except strictjson.DuplicateKey as exc:
        raise ProxyError(
            400,
            f"The request body gives the key {str(exc)!r} twice in one object; JSON parsers "
            "disagree on which one counts, so seedproxy refuses it.",
            code="duplicate_key",
        ) from None
    if not isinstance(body, dict):
        raise ProxyError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def on_loop(raw: bytes) -> bool:
    """Whether a request body is small enough to parse, key and redact on the event loop:
    few bytes, and few parts (the seed policy, key rules and redaction walk them; 60 KB
    of ``[{},{},...]`` took 100 ms), both counted at C speed."""
    return len(raw) <= ON_LOOP and sum(shape(raw)) <= NODES_ON_LOOP


def namespace(headers: CIMultiDictProxy[str], scope: str) -> str:
    """The cache namespace: the ``X-Seedproxy-Namespace`` header, plus the credential's
    hash (:func:`~proxy.scope.credential_scope`) when ``cache.scope = "per-key"``."""
    name = headers.get("X-Seedproxy-Namespace", "")
    if name and not _NAMESPACE.fullmatch(name):
        raise ProxyError(
            400,
            "Invalid X-Seedproxy-Namespace: use 1-64 of A-Z a-z 0-9 . _ -",
            code="invalid_namespace",
        )
    if scope == "per-key":
        name += "|key:" + credential_scope(headers)
    return name


def client_seed_mode(header: str, settings: Settings) -> str:
    """The seed policy an ``X-Seedproxy-Seed-Mode`` header asks for, if the operator lets
    clients choose (``seed.allow_client_mode``); 403 otherwise."""
    return request_seed_mode(header, settings.seed.mode, settings.client_seed_mode)


def parse_body(ident: Ident, endpoint: Endpoint, settings: Settings) -> Parsed:
    """What the request :data:`~proxy.memo.Ident` says, through ``settings``: its body
    parsed, the seed policy applied, its key computed."""
    path, raw_query, name, client_mode, raw = ident
    body = json_object(raw)
    model = body.get("model")  # before any work on the body
    if isinstance(model, str) and len(model) > MAX_MODEL_NAME:
        raise ProxyError(
            400,
            f"The model name is {len(model)} characters long; seedproxy accepts at most "
            f"{MAX_MODEL_NAME}.",
            code="invalid_model",
            param="model",
        )
    where = Where(path, raw_query, name, client_mode)
    keyed = settings.keyer.key(where, endpoint.seeded, body, raw, live=True)
    return Parsed(
        body,
        keyed.seed_edit,
        keyed.key,
        model if isinstance(model, str) else "",
        keyed.seed,
        endpoint.kind.stateful(body),
        keyed.legacy,
    )


async def parse(
    request: web.Request,
    endpoint: Endpoint,
    settings: Settings,
    mode: CacheMode,
    credential: tuple[str, str] | None,
    memo: Memo | None = None,
) -> Call:
    """The client's request as a Call: seed policy applied, key computed (or found in
    ``memo`` for the same request seen before), cache plan made from ``mode``
    (``cache.mode``, or a session's) and the request's directives."""
    headers = request.headers
    header = headers.get(SEED_MODE_HEADER)  # refused (403) before the body is read
    client_mode = None if header is None else client_seed_mode(header, settings)
    raw = await read_body(request, settings.server.body_timeout, settings.server.max_body)
    raw_query = request.rel_url.raw_query_string
    ident: Ident = (
        endpoint.path,
        raw_query,
        namespace(headers, settings.cache.scope),
        client_mode,
        raw,
    )
    parsed = memo.get(ident) if memo is not None else None
    if parsed is None and not on_loop(raw):  # too big for the memo, too slow for the loop
        parsed = await asyncio.to_thread(parse_body, ident, endpoint, settings)
    elif parsed is None:
        parsed = parse_body(ident, endpoint, settings)
        if memo is not None:
            memo.put(ident, parsed)
    return Call(
        endpoint,
        parsed.body,
        raw,
        parsed.seed_edit,
        headers,
        credential,
        parsed.key,
        parsed.model,
        parsed.seed,
        plan_request(
            mode,
            headers.get("Cache-Control"),
            uncached(parsed.stateful, endpoint.seeded, parsed.seed, settings.seed.mode),
        ),
        raw_query,
        "traffic" if client_mode is None else "client",
        parsed.legacy,
    )
