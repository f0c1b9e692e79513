"""`seedproxy serve --workers N`: N processes accept on one port (SO_REUSEPORT), supervised.

Each worker is the whole proxy on the shared store; misses are coalesced across them
through the store's in-flight markers and their counters add up in the store."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
import urllib.request
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from aiohttp import web

from .config import Settings
from .observe import AccessLogger, access_log, new_event_loop, setup_logging

log = logging.getLogger("seedproxy.workers")
RAPID_EXIT = 5.0  # a worker that dies sooner than this after starting counts as failing
MAX_RAPID_EXITS = 3


def run_worker(settings: Settings) -> None:
    """One worker process: the app on the shared port."""
    from .app import create_app

    setup_logging(settings.log.format, settings.log.level)
    web.run_app(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        reuse_port=True,
        print=None,
        access_log=access_log,
        access_log_class=AccessLogger,
        loop=new_event_loop(),
    )


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _healthy(settings: Settings) -> bool:
    host = _probe_host(settings.server.host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.server.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def supervise(settings: Settings, announce: Callable[[], None]) -> int:
    """Start the workers, announce once they answer, restart any that dies, stop them all
    on SIGINT/SIGTERM. Returns the exit status."""
    ctx = multiprocessing.get_context("spawn")
    count = settings.server.workers
    stopping = False

    def start() -> tuple[BaseProcess, float]:
        proc = ctx.Process(target=run_worker, args=(settings,), name="seedproxy-worker")
        proc.start()
        return proc, time.monotonic()

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    workers = [start() for _ in range(count)]
    announced, rapid_exits, status = False, 0, 0
    while not stopping:
        if not announced and _healthy(settings):
            announce()
            announced = True
        for i, (proc, started) in enumerate(workers):
            if proc.is_alive():
                continue
            rapid_exits = rapid_exits + 1 if time.monotonic() - started < RAPID_EXIT else 0
            log.warning(
                "worker exited; restarting it",
                extra={"data": {"pid": proc.pid, "exitcode": proc.exitcode}},
            )
            if rapid_exits >= MAX_RAPID_EXITS:
                log.error("workers keep failing at start; stopping")
                stopping, status = True, 1
                break
            workers[i] = start()
        time.sleep(0.2)
    for proc, _ in workers:
        if proc.is_alive():
            proc.terminate()  # SIGTERM: aiohttp shuts down gracefully
    deadline = time.monotonic() + 15
    for proc, _ in workers:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
    return status
