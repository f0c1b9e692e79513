"""Run aiohttp servers on a background event loop so sync and async SDK clients can call them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from proxy.app import COUNTS, PIPELINE, create_app
from proxy.config import Settings, load_settings, with_overrides
from proxy.observe import AccessLogger, access_log, flush_logs, setup_logging

if TYPE_CHECKING:
    from tests.upstream import FakeUpstream

T = TypeVar("T")
FAKE_KEY = "sk-planted-secret-do-not-store-7f3a"  # hyphenated: never mistaken for a real key


def chat_completion(
    content: str = "ok",
    model: str = "gpt-test",
    fingerprint: Any = "fp_one",
    usage: tuple[int, int] = (1, 1),
    **top: Any,
) -> dict[str, Any]:
    """A one-choice chat completion as an upstream sends it; ``top`` adds or replaces
    top-level fields (``id``, ``service_tier``...)."""
    prompt, completion = usage
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        **top,
    }


def until(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Wait for ``condition()`` to hold (set by another thread or process); fail after
    ``seconds``. What the test asserts next is decided by the condition, not by the wait."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


async def until_async(condition: Callable[[], bool], seconds: float = 30) -> None:
    """:func:`until` for a test on an event loop."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def clean_env() -> dict[str, str]:
    """This process's environment without ``SEEDPROXY_*`` settings: a proxy started with
    it reads only what the test gives it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SEEDPROXY_")}


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m proxy ARGS`` (the seedproxy CLI) in ``cwd``, in a SEEDPROXY_-free
    environment plus ``env``, its output kept as text."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env() | (env or {}),
        cwd=cwd,
    )


def serve_argv(port: int, *flags: str) -> list[str]:
    """``seedproxy serve`` on ``port`` with ``flags``, as a command line of this Python."""
    return [sys.executable, "-m", "proxy", "serve", "--port", str(port), *flags]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BackgroundLoop:
    """An event loop in a daemon thread; ``run`` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise AssertionError(f"still running after {timeout} s:\n{self.where()}") from None

    def where(self) -> str:
        """What the loop's thread and each of its tasks are doing: why a call is stuck."""
        out = io.StringIO()
        frame = sys._current_frames().get(self.thread.ident or 0)
        out.write("loop thread:\n" + "".join(traceback.format_stack(frame)) if frame else "")
        for task in list(asyncio.all_tasks(self.loop)):
            out.write(f"{task!r}\n")
            awaited: Any = task.get_coro()
            while awaited is not None:  # the chain of awaits, outermost first
                frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
                if frame is not None:
                    out.write(
                        f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\n"
                    )
                awaited = getattr(awaited, "cr_await", None) or getattr(
                    awaited, "gi_yieldfrom", None
                )
        return out.getvalue()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class ProxyServer:
    """seedproxy's app on 127.0.0.1, startable, stoppable and restartable on the same port."""

    def __init__(self, bg: BackgroundLoop, settings: Settings) -> None:
        self.bg = bg
        self.settings = settings
        self.port = settings.server.port
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def app(self) -> web.Application:
        assert self.runner is not None
        return self.runner.app

    @property
    def pipeline(self) -> Any:
        return self.app[PIPELINE]

    @property
    def counters(self) -> Any:
        return self.app[COUNTS].total

    async def _start(self) -> None:
        self.runner = web.AppRunner(
            create_app(self.settings),
            access_log=access_log,
            access_log_class=AccessLogger,
            shutdown_timeout=2.0,
        )
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def start(self) -> ProxyServer:
        self.bg.run(self._start())
        return self

    def stop(self) -> None:
        self.bg.run(self._stop())

    def restart(self, **sections: dict[str, Any]) -> ProxyServer:
        self.stop()
        if sections:
            self.settings = with_overrides(self.settings, **sections)
        return self.start()


def proxy_settings(cache_dir: Path, upstream_url: str, **sections: dict[str, Any]) -> Settings:
    base = load_settings(
        env={},
        flags={
            "server.port": free_port(),
            "upstream.base_url": f"{upstream_url}/v1",
            "cache.dir": str(cache_dir),
        },
    )
    return with_overrides(base, **sections) if sections else base


class LogCapture:
    """seedproxy's log lines, as a user would see them, kept in memory at DEBUG level."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        setup_logging("json", "debug", self.stream)

    @property
    def text(self) -> str:
        flush_logs()
        return self.stream.getvalue()

    def close(self) -> None:
        logging.getLogger("seedproxy").handlers.clear()


def http(
    server_url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, Any, bytes]:
    """A raw HTTP request (no SDK), for what the SDK cannot send; returns status, headers, body."""
    import http.client
    from urllib.parse import urlsplit

    netloc = urlsplit(server_url).netloc
    conn = http.client.HTTPConnection(netloc, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def stored_bytes(store_config: dict[str, Any]) -> list[bytes]:
    """Every byte the store holds, file by file (disk) or key by key (Redis)."""
    if store_config["backend"] == "disk":
        return [p.read_bytes() for p in Path(store_config["dir"]).rglob("*") if p.is_file()]
    import redis

    out = []
    with redis.Redis.from_url(store_config["redis_url"]) as client:
        for key in client.scan_iter("*"):
            kind = client.type(key)
            value: Any = {
                b"string": client.get,
                b"hash": client.hgetall,
                b"list": lambda k: client.lrange(k, 0, -1),
                b"set": client.smembers,
            }[kind](key)
            out.append(key + repr(value).encode())
    return out


class Serve:
    """`seedproxy serve` in its own process; what it prints (the start-up line, its log)
    is kept in ``log``."""

    def __init__(self, port: int, upstream: FakeUpstream, env: dict[str, str], *args: str) -> None:
        base = clean_env()
        self.port = port
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"seedproxy-{port}.log"
        self.proc = subprocess.Popen(
            serve_argv(port, "--upstream", f"{upstream.url}/v1", *args),
            env=base | env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while http_ok(port) is False:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"seedproxy did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def http_ok(port: int) -> bool:
    try:
        return http(f"http://127.0.0.1:{port}", "GET", "/healthz", timeout=1)[0] == 200
    except OSError:
        return False
