"""Streamed hits stream (issue 29 item 2): a large entry is written chunk by chunk as
clients read it, so 40 slow readers of a 3 MB entry cost the proxy little memory, given
back when they leave; clients that read nothing are cut after ``server.write_timeout``
(hits, relayed streamed misses and passthrough downloads alike); ``/healthz`` answers
within a second throughout. The proxy is a real ``seedproxy serve``; its memory is its
resident set in /proc."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from proxy.config import load_settings
from proxy.writes import WriteWatch
from tests.harness import Serve, free_port, http
from tests.upstream import FakeUpstream

pytestmark = pytest.mark.serial

MiB = 1024 * 1024
BIG = "word " * 600_000  # a 3 MB answer; its SSE is several times that
CHAT = "/v1/chat/completions"
HEALTH_BOUND = 1.0  # seconds /healthz may take, whatever the others do


def chat(content: str, stream: bool) -> bytes:
    messages = [{"role": "user", "content": content}]
    return orjson.dumps({"model": "gpt-test", "messages": messages, "stream": stream})


def request(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def rss(pid: int) -> int:
    """The process's resident set, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match is not None
    return int(match.group(1)) * 1024


@pytest.fixture
def backend() -> str:
    return "disk"


def serving(upstream: FakeUpstream, tmp_path: Path, write_timeout: str) -> Serve:
    """A proxy holding the 3 MB answer to ``chat("big")``."""
    upstream.reply = BIG
    env = {"SEEDPROXY_SERVER_WRITE_TIMEOUT": write_timeout}
    proxy = Serve(free_port(), upstream, env, "--cache-dir", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{proxy.port}"
    status, headers, body = http(
        url, "POST", CHAT, chat("big", False), {"Content-Type": "application/json"}
    )
    assert status == 200 and headers["X-Cache"] == "MISS" and len(body) > 3_000_000
    # a whole streamed hit, read at once: what a first one costs is in the baseline
    status, headers, body = http(
        url, "POST", CHAT, chat("big", True), {"Content-Type": "application/json"}
    )
    assert status == 200 and headers["X-Cache"] == "HIT" and body.endswith(b"data: [DONE]\n\n")
    return proxy


@pytest.fixture
def slow_proxy(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Serve]:
    proxy = serving(upstream, tmp_path, "60")
    yield proxy
    proxy.stop()


@pytest.fixture
def cutting_proxy(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Serve]:
    proxy = serving(upstream, tmp_path, "1")
    yield proxy
    proxy.stop()


async def connect(port: int, payload: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client with a small receive buffer that has sent ``payload``."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(payload)
    await writer.drain()
    return reader, writer


POLLER = """
import sys, threading, time, urllib.request
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
slowest, answers = 0.0, 0
while not stop.is_set():
    started = time.monotonic()
    with urllib.request.urlopen(sys.argv[1], timeout=30) as response:
        assert response.status == 200
    slowest, answers = max(slowest, time.monotonic() - started), answers + 1
    stop.wait(0.2)
print(slowest, answers)
"""


class Health:
    """Polls /healthz from a process of its own (so that nothing in this one, such as
    the fake upstream making a stream, delays it) until :meth:`result`."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", POLLER, f"http://127.0.0.1:{port}/healthz"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def result(self) -> tuple[float, int]:
        """(the slowest answer in seconds, how many answers)."""
        out, _ = self.proc.communicate("", timeout=60)
        assert self.proc.returncode == 0
        slowest, answers = out.split()
        return float(slowest), int(answers)


def test_40_slow_readers_of_a_3_mb_entry_cost_little_memory_and_give_it_back(slow_proxy):
    pid, port = slow_proxy.proc.pid, slow_proxy.port
    baseline = rss(pid)
    peak = baseline
    read: list[int] = []

    async def reader(leave: asyncio.Event) -> None:
        stream, writer = await connect(port, request(CHAT, chat("big", True)))
        got = 0
        while not leave.is_set():
            got += len(await stream.read(2048))
            await asyncio.sleep(0.05)  # a slow reader: about 40 KB a second
        read.append(got)
        writer.close()

    async def run() -> None:
        nonlocal peak
        leave = asyncio.Event()
        health = Health(port)
        readers = [asyncio.create_task(reader(leave)) for _ in range(40)]
        loop = asyncio.get_running_loop()
        until = loop.time() + 6
        while loop.time() < until:
            peak = max(peak, rss(pid))
            await asyncio.sleep(0.1)
        leave.set()
        await asyncio.gather(*readers)
        slowest, answers = health.result()
        assert answers >= 10 and slowest < HEALTH_BOUND, slowest

    asyncio.run(run())
    assert len(read) == 40 and all(got > 0 for got in read)  # each was being served
    assert peak - baseline < 100 * MiB, (baseline / MiB, peak / MiB)
    # they left: the memory comes back (within a little of the baseline)
    deadline = time.monotonic() + 30
    while rss(pid) - baseline > 20 * MiB:
        assert time.monotonic() < deadline, (baseline / MiB, rss(pid) / MiB)
        time.sleep(0.2)


def cuts(log: Path) -> int:
    """Connections the proxy's log says it cut for write_timeout."""
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if "write_timeout" in line]
    return sum(int(n) for line in lines for n in re.findall(r'"connections": ?(\d+)', line))


def test_clients_that_never_read_are_cut_after_write_timeout(cutting_proxy, upstream):
    pid, port = cutting_proxy.proc.pid, cutting_proxy.port
    baseline = rss(pid)
    full = len(
        http(
            f"http://127.0.0.1:{port}",
            "POST",
            CHAT,
            chat("big", True),
            {"Content-Type": "application/json"},
        )[2]
    )

    async def run() -> list[bytes]:
        health = Health(port)
        clients = [await connect(port, request(CHAT, chat("big", True))) for _ in range(10)]
        # a streamed miss relayed as it comes (of 500 KB: 100,000 events, as the fake
        # upstream makes them), and a passthrough download of 4 MB
        upstream.reply = "word " * 100_000
        clients.append(await connect(port, request(CHAT, chat("another big one", True))))
        upload = orjson.dumps({"blob": "x" * 4_000_000})
        clients.append(await connect(port, request("/v1/files", upload)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while cuts(cutting_proxy.log) < len(clients):  # none of them reads a byte
            assert loop.time() < deadline, cutting_proxy.log.read_text()[-2000:]
            await asyncio.sleep(0.1)
        held = rss(pid)
        assert held - baseline < 100 * MiB, (baseline / MiB, held / MiB)
        received = []
        for stream, writer in clients:  # what was in flight, then the end
            async with asyncio.timeout(30):
                received.append(await stream.read())
            writer.close()
        slowest, _ = health.result()
        assert slowest < HEALTH_BOUND, slowest
        return received

    received = asyncio.run(run())
    for got in received[:10]:
        assert got.startswith(b"HTTP/1.1 200 ") and b"X-Cache: HIT" in got
        assert len(got) < full and not got.endswith(b"data: [DONE]\n\n")  # cut short
    miss, download = received[10:]
    assert miss.startswith(b"HTTP/1.1 200 ") and not miss.endswith(b"data: [DONE]\n\n")
    assert download.startswith(b"HTTP/1.1 200 ") and len(download) < 4_000_000


def test_write_timeout_has_a_documented_default_and_must_be_positive():
    assert load_settings(env={}).server.write_timeout == 60.0
    with pytest.raises(ValueError, match="SEEDPROXY_SERVER_WRITE_TIMEOUT: must be positive"):
        load_settings(env={"SEEDPROXY_SERVER_WRITE_TIMEOUT": "0"})


class Transport:
    """What the write watch reads of a connection."""

    def __init__(self) -> None:
        self.waiting, self.aborted = 0, False

    def get_write_buffer_size(self) -> int:
        return self.waiting

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


def test_the_watch_cuts_only_a_connection_with_bytes_waiting_and_none_leaving():
    watch = WriteWatch(timeout=10.0)
    idle, reading, stuck = Transport(), Transport(), Transport()
    for transport in (idle, reading, stuck):
        watch.add(transport)  # type: ignore[arg-type]
    reading.waiting = stuck.waiting = 5000
    for now in range(0, 30, 2):  # an injected clock: a sweep every 2 s
        reading.waiting -= 100  # its client takes a little each time
        assert watch.sweep(float(now)) == (1 if now == 10 else 0)
        assert stuck.aborted is (now >= 10)  # waiting, unchanged, since 0: cut at 10
    assert not idle.aborted and not reading.aborted
    reading.waiting = 0  # all taken: a cut connection is forgotten, nothing else is due
    assert watch.sweep(40.0) == 0
    reading.waiting = 10  # then it stops reading: cut once that lasts
    assert watch.sweep(42.0) == 0 and watch.sweep(52.0) == 1 and reading.aborted
