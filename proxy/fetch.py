"""Going upstream for a cached endpoint: one call, its answer read in full (a stream
folded into the equivalent JSON), and a streamed answer teed to the waiting client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from .call import Call
from .config import UpstreamSettings
from .errors import ProxyError, error_body
from .kinds import StreamFold, fingerprint_of
from .observe import Counters
from .policy import Outcome
from .sse import EventSplitter, parse_event
from .store import Entry
from .traffic import Traffic
from .upstream import Upstream, forward_response_headers

log = logging.getLogger("seedproxy.pipeline")

DISCONNECT_CHECK = 0.1  # seconds between looks at a waiting streaming client's connection


@dataclass(frozen=True, slots=True)
class Live:
    """An upstream answer, read in full (a stream is folded into the equivalent JSON)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    parsed: dict[str, Any] | None  # the JSON object of a 2xx answer
    events: bytes = b""  # the raw events, for kinds that replay them as recorded
    final: bytes = b""  # a stream's closing event, held back until the answer is stored
    borrowed: bool = False  # stored by another process for another client meanwhile

    @property
    def fingerprint(self) -> str | None:
        if self.parsed is None:
            return None
        return fingerprint_of(self.parsed.get("system_fingerprint"))

    @property
    def outcome(self) -> Outcome:
        """What :func:`policy.after_fetch` judges: ``parsed`` is set for an answer only."""
        if self.parsed is not None:
            return Outcome.ANSWER
        return Outcome.NOT_ANSWER if 200 <= self.status < 300 else Outcome.ERROR

    @classmethod
    def of(cls, entry: Entry) -> Live:
        """A stored entry as if it had just come from the upstream (another process's)."""
        headers = CIMultiDict({"Content-Type": entry.content_type})
        return cls(
            entry.status, headers, entry.body, orjson.loads(entry.body), entry.stream, borrowed=True
        )


@dataclass(frozen=True, slots=True)
class Start:
    """A streamed answer's status line and headers, and the fingerprint its first event named."""

    status: int
    headers: CIMultiDict[str]
    fingerprint: str | None


class Tee:
    """A streamed answer on its way from the fetching task to one client: :meth:`start`,
    then :meth:`event` per event, then :meth:`end` with the closing event; :meth:`close`
    once the task is over. The client takes all that arrived since it last looked."""

    def __init__(self) -> None:
        self.head: Start | None = None
        self.ended = False
        self.closed = False
        self.gone = False  # the client left before the end
        self._chunks: list[bytes] = []
        self._news = False  # something was handed over since the client last waited
        self._ready: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        self._news = True
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def start(self, status: int, headers: CIMultiDict[str], fingerprint: str | None) -> None:
        self.head = Start(status, headers, fingerprint)
        self._wake()

    def event(self, raw: bytes) -> None:
        if not self.gone:  # nobody will take it
            self._chunks.append(raw)
            self._wake()

    def end(self, final: bytes) -> None:
        self._chunks.append(final)
        self.ended = True
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def take(self) -> bytes:
        """The events handed over since the last take."""
        chunk = b"".join(self._chunks)
        self._chunks.clear()
        return chunk

    async def wait(self, request: web.Request) -> None:
        """Return once something was handed over, noticing meanwhile that the client has
        gone (else that would be learnt only at the next write, perhaps after the whole
        answer)."""
        while not self._news:
            self._ready = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(DISCONNECT_CHECK):
                    await self._ready
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError("the client closed the connection") from None
        self._news = False


class Fetcher:
    """Makes one upstream call for a Call and reads its answer."""

    def __init__(self, upstream: Upstream, counters: Counters, traffic: Traffic) -> None:
        self.upstream = upstream
        self.counters = counters
        self.traffic = traffic

    async def fetch(self, call: Call, tee: Tee | None = None) -> Live:
        """The upstream's answer to ``call``. A streamed one is passed to ``tee`` as it
        comes, all but its closing event: the caller stores the answer, then ends the tee."""
        url = self.upstream.url(call.endpoint.tail, call.raw_query)
        self.traffic.sent()
        async with self.upstream.request(
            "POST", url, call.headers, call.upstream_body, decompress=True, label=call.endpoint.path
        ) as response:
            headers = forward_response_headers(response.headers, decoded=True)
            if (
                200 <= response.status < 300
                and call.endpoint.kind.streams
                and response.content_type == "text/event-stream"
            ):
                return await self._stream(call, response, headers, tee)
            body = await self._read(call, response)
        if not 200 <= response.status < 300:
            self.counters.add("upstream_errors")
            return Live(response.status, headers, self.upstream.error_body(body), None)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            self.counters.add("upstream_errors")
            raise ProxyError(
                502,
                "The upstream answered with a body that is not a JSON object; nothing was cached.",
                code="upstream_invalid",
            )
        if not call.endpoint.kind.is_answer(parsed):  # passed on as it came: NOT_ANSWER
            self.counters.add("upstream_errors")
            return Live(response.status, headers, body, None)
        return Live(response.status, headers, body, parsed)

    async def _read(self, call: Call, response: aiohttp.ClientResponse) -> bytes:
        """A whole answer, refused once it grows past ``upstream.max_response`` (counted
        decoded, so a compressed answer cannot grow past it either)."""
        limit = self.upstream.settings.max_response
        parts: list[bytes] = []
        size = 0
        if response.content_length is None or response.content_length <= limit:
            async for data in response.content.iter_any():
                size += len(data)
                if size > limit:
                    break
                parts.append(data)
            else:
                return b"".join(parts)
        self.counters.add("upstream_errors")
        log.warning(
            "upstream answer too large; not cached",
            extra={"data": {"key": call.key, "endpoint": call.endpoint.path, "limit": limit}},
        )
        raise ProxyError(502, _too_large(limit), code="upstream_too_large")

    async def _stream(
        self,
        call: Call,
        response: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        tee: Tee | None,
    ) -> Live:
        """Read an SSE answer event by event, pass each on and fold them into one answer,
        holding the closing event back. An incomplete stream is an error, never an answer."""
        reader = _StreamReader(call.endpoint.kind.fold(), response.status, headers, tee)
        try:
            await reader.read(response, self.upstream.settings)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reader.problem = f"the upstream connection failed mid-stream ({type(exc).__name__})"
        fold = reader.fold
        if tee is not None and tee.head is None:
            tee.start(response.status, headers, fold.fingerprint)
        problem = reader.problem
        if problem is None and not fold.complete:
            problem = "the upstream stream ended before its final event"
        if problem is not None:
            raise self._incomplete(call, problem, tee, reader.code)
        answer = fold.result()
        json_headers = headers.copy()
        json_headers["Content-Type"] = "application/json"
        final = reader.final
        kept = b"".join(reader.events) + final if call.endpoint.kind.keeps_events else b""
        return Live(response.status, json_headers, orjson.dumps(answer), answer, kept, final)

    def _incomplete(self, call: Call, problem: str, tee: Tee | None, code: str) -> ProxyError:
        """A stream unfit to store: logged, ended for the client with an error event."""
        self.counters.add("upstream_errors")
        log.warning(
            "incomplete upstream stream; not cached",
            extra={"data": {"key": call.key, "endpoint": call.endpoint.path, "problem": problem}},
        )
        message = f"seedproxy: {problem}; nothing was cached."
        if tee is not None:
            tee.end(b"data: " + error_body(502, message, code) + b"\n\n")
        return ProxyError(502, message, code=code)


def _too_large(limit: int) -> str:
    return (
        f"The upstream answer is larger than upstream.max_response ({limit} bytes); "
        "nothing was cached."
    )


class _StreamReader:
    """One upstream stream being read: its fold, the events so far, the closing event
    once seen and the first problem (a class, not closures: this runs per event)."""

    __slots__ = ("code", "events", "final", "fold", "headers", "problem", "status", "tee")

    def __init__(
        self, fold: StreamFold, status: int, headers: CIMultiDict[str], tee: Tee | None
    ) -> None:
        self.fold, self.status, self.headers, self.tee = fold, status, headers, tee
        self.events: list[bytes] = []
        self.final = b""
        self.problem: str | None = None
        self.code = "upstream_incomplete"

    async def read(self, response: aiohttp.ClientResponse, settings: UpstreamSettings) -> None:
        """Read the stream to its end, to ``max_response`` bytes, or, once the client has
        left, for at most ``timeout`` seconds more: reading on for the store is bounded too."""
        splitter = EventSplitter()
        loop = asyncio.get_running_loop()
        size, left = 0, None
        async for data in response.content.iter_any():
            size += len(data)
            if size > settings.max_response:
                self.problem, self.code = _too_large(settings.max_response), "upstream_too_large"
                return
            if self.tee is not None and self.tee.gone:
                left = loop.time() if left is None else left
                if loop.time() - left > settings.timeout:
                    self.problem = "the client left and the upstream did not finish in time"
                    return
            await self.feed(splitter.feed(data))

    async def feed(self, raws: Sequence[bytes]) -> None:
        """Pass events on, then fold them. The first event starts the client's stream at
        once: it names the fingerprint."""
        tee, fold = self.tee, self.fold
        unfolded = []
        for raw in raws:
            name, payload = parse_event(raw)
            if fold.final_event(name, payload):
                self.final = raw  # held back until the answer is stored, folded all the same
                unfolded.append((name, payload))
                continue
            self.events.append(raw)
            if tee is not None and tee.head is None:
                if payload is not None:
                    self.problem = fold.feed(name, payload)
                tee.start(self.status, self.headers, fold.fingerprint)
                tee.event(raw)
                await asyncio.sleep(0)  # on its way before the rest is looked at
                continue
            if tee is not None:
                tee.event(raw)
            unfolded.append((name, payload))
        if tee is not None and unfolded:
            await asyncio.sleep(0)  # the client's task writes them before they are folded
        for name, payload in unfolded:
            if payload is not None and self.problem is None:
                self.problem = fold.feed(name, payload)
