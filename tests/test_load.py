"""A bounded load and soak test: many concurrent clients, mixed hits, misses and streams,
1% of upstream calls failing. Zero proxy-caused errors, stable memory, counters that add up.

CI runs a short version; the full one runs on demand:
    LOAD_SECONDS=60 LOAD_CLIENTS=200 python -m pytest -m load -s
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.harness import clean_env, free_port, http

SECONDS = float(os.environ.get("LOAD_SECONDS", "15"))
CLIENTS = int(os.environ.get("LOAD_CLIENTS", "200"))
WARM_UP = 0.4  # share of the run before memory is measured (SQLite's caches fill up)
pytestmark = [
    pytest.mark.load,
    pytest.mark.serial,
    pytest.mark.parametrize("backend", ["disk"], indirect=True),
]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def start(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            http(f"http://127.0.0.1:{port}", "GET", "/healthz", timeout=1)
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{args} did not start") from None
            time.sleep(0.05)


def test_load_and_soak(tmp_path, store_env):
    env = clean_env()
    up_port, port = free_port(), free_port()
    upstream = start(
        ["tests.upstream", "--port", str(up_port), "--latency", "0.005", "--fail-rate", "0.01"],
        env,
        up_port,
    )
    proxy = start(
        [
            "proxy",
            "serve",
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{up_port}/v1",
            "--log-format",
            "text",
        ],
        env | store_env | {"SEEDPROXY_LOG_LEVEL": "warning"},
        port,
    )
    try:
        sent, outcomes, samples = asyncio.run(drive(port, proxy.pid))
        # the stats endpoint writes this process's counts before it reads the store's
        stats = orjson.loads(http(f"http://127.0.0.1:{port}", "GET", "/_seedproxy/stats")[2])
        assert proxy.poll() is None
    finally:
        for proc in (proxy, upstream):
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    print(
        f"\nload: {sent} requests in {SECONDS:.0f}s from {CLIENTS} clients: "
        f"{dict(outcomes)}; RSS {samples[0]} -> {samples[-1]} KiB; stats {stats}"
    )
    proxy_errors = {k: v for k, v in outcomes.items() if k not in ("ok", "upstream_failure")}
    assert proxy_errors == {}
    assert outcomes["ok"] > 0 and outcomes["upstream_failure"] > 0
    assert stats["requests"] == sent
    assert stats["hits"] + stats["misses"] == stats["requests"]
    # the trend, not one reading: the median of the last fifth of the samples against the
    # first fifth's (a single reading can catch a moment's burst, such as a WAL checkpoint)
    fifth = max(1, len(samples) // 5)
    first, last = statistics.median(samples[:fifth]), statistics.median(samples[-fifth:])
    growth = (last - first) / first
    assert growth < 0.10, f"RSS grew {growth:.1%} after warm-up: {samples}"


async def drive(port: int, pid: int) -> tuple[int, Counter[str], list[int]]:
    base = f"http://127.0.0.1:{port}/v1"
    popular = [f"popular question {i}" for i in range(20)]
    outcomes: Counter[str] = Counter()
    sent = 0
    samples: list[int] = []
    stop_at = time.monotonic() + SECONDS
    measure_at = time.monotonic() + SECONDS * WARM_UP

    async def one(session: aiohttp.ClientSession, rng: random.Random) -> None:
        nonlocal sent
        roll = rng.random()
        prompt = rng.choice(popular) if roll < 0.6 else f"unique {rng.getrandbits(64)}"
        stream = rng.random() < 0.15
        body = orjson.dumps(
            {
                "model": "gpt-load",
                "stream": stream,
                "messages": [{"role": "user", "content": prompt}],
            }
        )
        sent += 1
        try:
            async with session.post(
                f"{base}/chat/completions", data=body, headers={"Content-Type": "application/json"}
            ) as r:
                data = await r.read()
                outcomes[classify(r.status, data, stream)] += 1
        except aiohttp.ClientError as exc:
            outcomes[f"client_error:{type(exc).__name__}"] += 1

    async def client(n: int) -> None:
        rng = random.Random(n)
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < stop_at:
                await one(session, rng)

    async def sampler() -> None:
        while time.monotonic() < stop_at:
            if time.monotonic() >= measure_at:
                samples.append(rss_kib(pid))
            await asyncio.sleep(0.25)
        samples.append(rss_kib(pid))

    await asyncio.gather(sampler(), *(client(n) for n in range(CLIENTS)))
    return sent, outcomes, samples


def classify(status: int, data: bytes, stream: bool) -> str:
    if status == 200:
        if stream:
            ok = data.rstrip().endswith(b"data: [DONE]")
        else:
            ok = bool(orjson.loads(data).get("choices"))
        return "ok" if ok else "broken_answer"
    if status == 500 and b"random failure" in data:
        return "upstream_failure"  # the upstream's own error, passed through
    return f"proxy_error:{status}:{data[:120]!r}"
