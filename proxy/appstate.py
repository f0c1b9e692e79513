"""The application's shared state: the keys its parts find each other by, and the counter
flush that both the flush loop and the admin pages run."""

from __future__ import annotations

import logging

from aiohttp import web

from .browser import Guard
from .config import Settings
from .observe import Counters, Metrics
from .pipeline import Pipeline
from .store import Store, StoreError
from .upstream import Upstream
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


async def flush_counters(app: web.Application) -> None:
    try:
        await app[COUNTS].flush(app[STORE].add_counters)
    except StoreError as exc:  # counted again with the next flush
        app[PIPELINE].health.failed(exc)
    except Exception:
        log.exception("could not flush counters")
