"""Logging (one JSON object per line, or text) and the in-process counters."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .determinism import metric_samples

log = logging.getLogger("seedproxy")
access_log = logging.getLogger("seedproxy.access")

COUNTERS = (
    "requests",
    "hits",
    "misses",
    "refreshes",
    "bypasses",
    "replay_misses",
    "stores",
    "coalesced",
    "drift_events",
    "fingerprint_changes",
    "upstream_errors",
    "verifications",
    "verify_skipped",
    "prompt_tokens_saved",
    "completion_tokens_saved",
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    data = getattr(record, "data", None)
    return data if isinstance(data, dict) else {}


# What a terminal or a log viewer takes for a control or a line break though JSON allows it
# raw: C1 controls and the Unicode line and paragraph separators; text lines also escape C0
# controls and DEL (a newline or an escape sequence from a model's output stays on its line).
_JSON_UNSAFE = {c: f"\\u{c:04x}" for c in (*range(0x80, 0xA0), 0x2028, 0x2029)}
_TEXT_UNSAFE = _JSON_UNSAFE | {c: f"\\u{c:04x}" for c in (*range(0x20), 0x7F)}
AIOHTTP_LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.web")


# an access line's fields, besides the time it took: method, path, status, cache result
ACCESS_FIELDS = ("method", "path", "status", "cache")
AccessFields = tuple[str, str, int, str | None]

_pid = os.getpid()  # a system call per log line otherwise; a forked worker learns its own


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _escaped(text: str, table: dict[int, str]) -> str:
    """``text`` with the characters of ``table`` as ``\\uXXXX`` (the common all-ASCII line
    costs one check)."""
    return text if text.isascii() and table is _JSON_UNSAFE else text.translate(table)


class LineFormatter(logging.Formatter):
    """One record, one line: :meth:`line` builds it from the record's parts, so a caller
    that has the parts (the access log) needs no LogRecord."""

    def format(self, record: logging.LogRecord) -> str:
        text = self.line(
            record.created, record.levelname, record.name, record.getMessage(), _fields(record)
        )
        return (
            self.with_exc(text, self.formatException(record.exc_info)) if record.exc_info else text
        )

    @staticmethod
    def line(created: float, level: str, name: str, msg: str, data: dict[str, Any]) -> str:
        raise NotImplementedError

    def access(self, created: float, name: str, fields: AccessFields, ms: float) -> str:
        """An access log line (:data:`ACCESS_FIELDS`, then ``ms``)."""
        return self.line(
            created, "INFO", name, "request", dict(zip(ACCESS_FIELDS, fields, strict=True), ms=ms)
        )

    @staticmethod
    def with_exc(text: str, exc: str) -> str:
        raise NotImplementedError


class JsonFormatter(LineFormatter):
    """``{"time", "level", "logger", "msg", ...data}`` on one line."""

    def __init__(self) -> None:
        super().__init__()
        # an access line's method, path, status and cache result, as JSON: a few distinct
        # ones make nearly all lines, and writing them out was a tenth of a cache hit
        self._fields: dict[AccessFields, str] = {}

    def access(self, created: float, name: str, fields: AccessFields, ms: float) -> str:
        text = self._fields.get(fields)
        if text is None:
            data = dict(zip(ACCESS_FIELDS, fields, strict=True))
            text = _escaped(orjson.dumps(data).decode()[1:-1], _JSON_UNSAFE)
            if len(self._fields) < 256:  # paths are the clients' to choose
                self._fields[fields] = text
        return (
            f'{{"time":{round(created, 3)},"level":"info","logger":{orjson.dumps(name).decode()},'
            f'"pid":{_pid},"msg":"request",{text},"ms":{ms}}}'
        )

    @staticmethod
    def line(created: float, level: str, name: str, msg: str, data: dict[str, Any]) -> str:
        line = orjson.dumps(
            {
                "time": round(created, 3),
                "level": level.lower(),
                "logger": name,
                "pid": _pid,
                "msg": msg,
                **data,
            },
            default=str,
        ).decode()
        return _escaped(line, _JSON_UNSAFE)

    @staticmethod
    def with_exc(text: str, exc: str) -> str:
        return text[:-1] + ',"exc":' + _escaped(orjson.dumps(exc).decode(), _JSON_UNSAFE) + "}"


class TextFormatter(LineFormatter):
    """``time level logger: msg {data}``; the data stays JSON so it is greppable."""

    @staticmethod
    def line(created: float, level: str, name: str, msg: str, data: dict[str, Any]) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(created))
        extra = " " + orjson.dumps(data, default=str).decode() if data else ""
        return _escaped(f"{stamp} {level:<7} {name}: {msg}{extra}", _TEXT_UNSAFE)

    @staticmethod
    def with_exc(text: str, exc: str) -> str:
        """The traceback on lines of its own, each escaped."""
        return "\n".join([text, *(_escaped(line, _TEXT_UNSAFE) for line in exc.split("\n"))])


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (``pip install seedproxy[fast]``), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class BufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes lines in batches, like nginx's ``access_log ... buffer= flush=``: warnings and
    above at once, the rest when 64 KiB have gathered or :meth:`flush` runs (every second,
    and at shutdown). A write and flush per request would cost more than the request."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.pending: list[str] = []
        self.size = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add(line)
        if record.levelno >= logging.WARNING:
            self.flush()

    def add(self, line: str) -> None:
        self.pending.append(line + "\n")
        self.size += len(line) + 1
        if self.size >= 65536:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            text, self.pending, self.size = "".join(self.pending), [], 0
            if text:
                self.stream.write(text)
            self.stream.flush()


def flush_logs() -> None:
    for handler in logging.getLogger("seedproxy").handlers:
        handler.flush()


def setup_logging(fmt: str, level: str, stream: Any = None) -> None:
    # No caller lookup (a stack walk per line) and no thread names: lines never show them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = BufferedHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # aiohttp's own lines (a handler's traceback, a bad request) in the same format and stream
    for name in ("seedproxy", *AIOHTTP_LOGGERS):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path (never the query or headers), status, cache result."""

    def log(self, request: BaseRequest, response: StreamResponse, duration: float) -> None:
        fields: AccessFields = (
            request.method,
            request.path,
            response.status,
            response.headers.get("X-Cache"),
        )
        ms = round(duration * 1000, 2)
        handlers = log.handlers
        if (
            len(handlers) == 1
            and isinstance(handlers[0], BufferedHandler)
            and isinstance(formatter := handlers[0].formatter, LineFormatter)
        ):
            # the same line, without a LogRecord and the logging calls around it: a sixth
            # of a cache hit's time went there
            handlers[0].add(formatter.access(time.time(), self.logger.name, fields, ms))
        else:
            data = dict(zip(ACCESS_FIELDS, fields, strict=True), ms=ms)
            self.logger.info("request", extra={"data": data})

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class Counters:
    """Counts kept in memory on the hot path and flushed to the shared store in batches.
    Once written, only what this process reports of itself is kept: the plain counters
    (:data:`COUNTERS`) and the comparison metric's samples, by a bounded set of model
    labels. Other names (per model, per hour) are the store's to keep, or a long-running
    process would keep one for every model and hour it ever saw."""

    def __init__(self) -> None:
        self.flushed: Counter[str] = Counter()  # COUNTERS names only
        self.pending: Counter[str] = Counter()
        self._compared: Counter[tuple[str, str, str]] = Counter()  # flushed metric samples
        self.labels = ModelLabels()  # shared with the other metrics labelled by model
        self._flushing = asyncio.Lock()

    def add(self, name: str, n: int = 1) -> None:
        self.pending[name] += n

    @property
    def total(self) -> Counter[str]:
        """The plain counters this process counted, and whatever it has not flushed yet."""
        return self.flushed + self.pending

    def comparisons(self) -> Counter[tuple[str, str, str]]:
        """``seedproxy_comparisons_total`` samples of what this process compared."""
        return self._compared + self._samples(self.pending)

    def _samples(self, counts: Mapping[str, int]) -> Counter[tuple[str, str, str]]:
        samples: Counter[tuple[str, str, str]] = Counter()
        for (model, fingerprint, result), n in metric_samples(counts).items():
            samples[self.labels(model), fingerprint, result] += n
        return samples

    def _keep(self, counts: Mapping[str, int], sign: int) -> None:
        """Add (``sign`` 1) or take back (-1) what a flush wrote to what is kept of it."""
        for name in COUNTERS:
            if name in counts:
                self.flushed[name] += sign * counts[name]
        for labels, n in self._samples(counts).items():
            self._compared[labels] += sign * n

    async def flush(self, write: Callable[[dict[str, int]], Awaitable[None]]) -> None:
        """Hand what was counted since the last flush to ``write``; if it fails, the counts
        go back for the next flush. Flushes run one at a time, so that a report which flushes
        first also waits for a flush already writing (else it reads the store before that
        write lands, and shows counts lower than the requests it has seen)."""
        async with self._flushing:
            if not self.pending:
                return
            pending, self.pending = dict(self.pending), Counter()
            self._keep(pending, 1)
            try:
                await write(pending)
            except Exception:  # not on cancel: a write in a thread may still land
                self._keep(pending, -1)
                self.pending.update(pending)
                raise


MODEL_LABELS = 100  # models given series of their own in a metric; later ones share OTHER
OTHER = "(other)"


class ModelLabels:
    """Model names as metric labels. They come from clients, and each label value is a
    series kept for the life of the process: the first :data:`MODEL_LABELS` names seen are
    their own label, any later one is :data:`OTHER`."""

    def __init__(self, limit: int = MODEL_LABELS) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, model: str) -> str:
        if model in self._seen:
            return model
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(model)
        return model


class DivergenceMetric:
    """``seedproxy_divergence_chars``: where drifted outputs first differ, per model."""

    def __init__(self, registry: CollectorRegistry, labels: ModelLabels) -> None:
        self.labels = labels
        self.histogram = Histogram(
            "seedproxy_divergence_chars",
            "Character position (from 1) where a live answer's output first differs from "
            "the stored one's, per drift event.",
            ["model"],
            registry=registry,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000),
        )

    def observe(self, model: str, chars: int) -> None:
        self.histogram.labels(self.labels(model)).observe(chars)


class Metrics:
    """Prometheus metrics of one app, in a registry of its own; every counter of
    :class:`Counters` is exported too, as ``seedproxy_<name>_total``."""

    def __init__(self, counters: Counters) -> None:
        self.registry = CollectorRegistry()
        # (route, X-Cache) -> count; a dict increment per request, not a labelled child
        self.requests: Counter[tuple[str, str]] = Counter()
        self.upstream_latency = Histogram(
            "seedproxy_upstream_latency_seconds",
            "Time to the upstream's response headers.",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.entries = Gauge("seedproxy_entries", "Stored keys.", registry=self.registry)
        self.bytes = Gauge(
            "seedproxy_cache_bytes", "Bytes the cache occupies.", registry=self.registry
        )
        self.divergence = DivergenceMetric(self.registry, counters.labels)
        self.registry.register(_CountersCollector(counters, self.requests))


class _CountersCollector(Collector):
    def __init__(self, counters: Counters, requests: Counter[tuple[str, str]]) -> None:
        self.counters = counters
        self.requests = requests

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "seedproxy_requests",
            "Requests by endpoint and cache result.",
            labels=["endpoint", "cache"],
        )
        for (endpoint, cache), value in sorted(self.requests.items()):
            family.add_metric([endpoint, cache], value)
        yield family
        total = self.counters.total
        comparisons = CounterMetricFamily(
            "seedproxy_comparisons",
            "Live answers compared with the stored one, by model, fingerprint and result.",
            labels=["model", "fingerprint", "result"],
        )
        for labels, value in sorted(self.counters.comparisons().items()):
            comparisons.add_metric(labels, value)
        yield comparisons
        for name in COUNTERS:
            if name != "requests":  # seedproxy_requests has labels, above
                yield CounterMetricFamily(
                    f"seedproxy_{name}", name.replace("_", " "), value=total[name]
                )
