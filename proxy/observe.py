"""Logging (one JSON object per line, or text) and the in-process counters."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("seedproxy")
access_log = logging.getLogger("seedproxy.access")

COUNTERS = ("requests", "hits", "misses", "refreshes", "bypasses", "replay_misses", "stores",
            "coalesced", "drift_events", "fingerprint_changes", "upstream_errors",
            "verifications", "verify_skipped",
            "prompt_tokens_saved", "completion_tokens_saved")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    data = getattr(record, "data", None)
    return data if isinstance(data, dict) else {}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "msg", ...data}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": round(record.created, 3), "level": record.levelname.lower(),
                "logger": record.name, "pid": record.process, "msg": record.getMessage(),
                **_fields(record)}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time level logger: msg {data}``; the data stays JSON so it is greppable."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        data = _fields(record)
        extra = " " + orjson.dumps(data, default=str).decode() if data else ""
        text = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}{extra}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


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


def setup_logging(fmt: str, level: str, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("seedproxy")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path (never the query or headers), status, cache result."""

    def log(self, request: BaseRequest, response: StreamResponse, duration: float) -> None:
        self.logger.info("request", extra={"data": {
            "method": request.method, "path": request.path, "status": response.status,
            "cache": response.headers.get("X-Cache"), "ms": round(duration * 1000, 2),
        }})

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class Counters:
    """Counts kept in memory on the hot path and flushed to the shared store in batches."""

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self.pending: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        self.total[name] += n
        self.pending[name] += n

    def take_pending(self) -> dict[str, int]:
        pending, self.pending = dict(self.pending), Counter()
        return pending


class Metrics:
    """Prometheus metrics of one app, in a registry of its own; every counter of
    :class:`Counters` is exported too, as ``seedproxy_<name>_total``."""

    def __init__(self, counters: Counters) -> None:
        self.registry = CollectorRegistry()
        self.requests = PromCounter(
            "seedproxy_requests", "Requests by endpoint and cache result.",
            ["endpoint", "cache"], registry=self.registry)
        self.upstream_latency = Histogram(
            "seedproxy_upstream_latency_seconds", "Time to the upstream's response headers.",
            ["endpoint"], registry=self.registry,
            buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))
        self.entries = Gauge("seedproxy_entries", "Stored keys.", registry=self.registry)
        self.bytes = Gauge("seedproxy_cache_bytes", "Bytes the cache occupies.",
                           registry=self.registry)
        self.registry.register(_CountersCollector(counters))


class _CountersCollector(Collector):
    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name in COUNTERS:
            if name != "requests":  # seedproxy_requests has labels, above
                yield CounterMetricFamily(f"seedproxy_{name}", name.replace("_", " "),
                                          value=self.counters.total[name])
