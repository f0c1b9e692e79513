"""`seedproxy serve --workers N`: N processes accept on one port (SO_REUSEPORT), supervised.

Each worker is the whole proxy on the shared store; misses are coalesced across them
through the store's in-flight markers and their counters add up in the store."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from multiprocessing.queues import SimpleQueue
from typing import Any

from aiohttp import web

from .config import ConfigError, ServerSettings, Settings
from .observe import AccessLogger, access_log, new_event_loop, setup_logging
from .store import StoreError

log = logging.getLogger("seedproxy.workers")
RAPID_EXIT = 5.0  # a worker that dies sooner than this after starting counts as failing
MAX_RAPID_EXITS = 3
CANNOT_START = 3  # a worker's exit status when restarting it cannot help; it said why first


def cannot_listen(server: ServerSettings, exc: OSError) -> ConfigError:
    """The one line for an address the proxy cannot listen on, the same whichever process
    found out (the supervisor's check, a worker, a single process)."""
    errno = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else None
    reason = os.strerror(errno) if errno else exc.strerror or str(exc)
    return ConfigError(
        f"server: cannot listen on {server.host}:{server.port}: {reason[:1].lower()}{reason[1:]}"
    )


class StartError(RuntimeError):
    """A worker could not start (the store, the address): the one line it reported."""


def run_worker(settings: Settings, failures: SimpleQueue[str]) -> None:
    """One worker process: the app on the shared port. A failure no restart can mend goes
    to the supervisor as one line, not as a traceback per worker."""
    from .app import create_app

    setup_logging(settings.log.format, settings.log.level)
    try:
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
    except StoreError as exc:
        failures.put(str(exc))
        sys.exit(CANNOT_START)
    except OSError as exc:
        failures.put(str(cannot_listen(settings.server, exc)))
        sys.exit(CANNOT_START)


def check_address(server: ServerSettings) -> None:
    """Bind the address once as the workers will, but without SO_REUSEPORT, and let go: a
    port in use by anything, another seedproxy's workers included (they would share it
    silently), raises OSError here, before any worker starts."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        server.host, server.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _healthy(settings: Settings) -> bool:
    host = _probe_host(settings.server.host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.server.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            status: int = response.status
            return status == 200
    except OSError:
        return False


def _stop_all(workers: list[tuple[BaseProcess, float]]) -> None:
    for proc, _ in workers:
        if proc.is_alive():
            proc.terminate()  # SIGTERM: aiohttp shuts down gracefully
    deadline = time.monotonic() + 15
    for proc, _ in workers:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()


def supervise(settings: Settings, announce: Callable[[], None]) -> int:
    """Start the workers, announce once they answer, restart any that dies, stop them all
    on SIGINT/SIGTERM. Returns the exit status; raises OSError for an address that cannot
    be listened on and StartError for a worker that cannot start."""
    check_address(settings.server)
    ctx = multiprocessing.get_context("spawn")
    failures: SimpleQueue[str] = ctx.SimpleQueue()
    count = settings.server.workers
    stopping = False

    def start() -> tuple[BaseProcess, float]:
        proc = ctx.Process(target=run_worker, args=(settings, failures), name="seedproxy-worker")
        proc.start()
        return proc, time.monotonic()

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    workers = [start() for _ in range(count)]
    announced, rapid_exits, status, failure = False, 0, 0, None
    while not stopping:
        if not announced and _healthy(settings):
            announce()
            announced = True
        for i, (proc, started) in enumerate(workers):
            if proc.is_alive():
                continue
            if proc.exitcode == CANNOT_START:
                failure, stopping = failures.get(), True  # put before the worker exited
                break
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
    _stop_all(workers)
    if failure is not None:
        raise StartError(failure)
    return status
