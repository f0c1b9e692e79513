"""An answered miss survives SIGKILL; a killed writer never leaves a servable half entry."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import orjson

from tests.harness import free_port

CHAT = "/v1/chat/completions"


def serve(port: int, cache_dir, upstream_url: str, mode: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEEDPROXY_")}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--port", str(port),
                             "--cache-dir", str(cache_dir), "--upstream", upstream_url,
                             "--mode", mode], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            import urllib.request

            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("seedproxy did not start")


def body(i: int) -> bytes:
    return orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": f"q{i}"}]})


async def _post(session: aiohttp.ClientSession, port: int, i: int, answered: dict[int, bytes],
                ten_answered: asyncio.Event) -> None:
    try:
        async with session.post(f"http://127.0.0.1:{port}{CHAT}", data=body(i),
                                headers={"Content-Type": "application/json"}) as r:
            data = await r.read()
            if r.status == 200:
                answered[i] = data
                if len(answered) >= 10:
                    ten_answered.set()
    except aiohttp.ClientError:
        pass


async def test_answered_requests_survive_sigkill(tmp_path, upstream):
    upstream.latency = 0.02
    port, cache_dir = free_port(), tmp_path / "cache"
    for round_ in range(3):
        proc = serve(port, cache_dir, f"{upstream.url}/v1", "record")
        answered: dict[int, bytes] = {}
        ten_answered = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(_post(session, port, round_ * 100 + i, answered,
                                               ten_answered)) for i in range(60)]
            await ten_answered.wait()
            proc.send_signal(signal.SIGKILL)
            await asyncio.gather(*tasks)
        proc.wait()
        assert answered

        # after the crash: every answered request is a hit with the same bytes, and no
        # request is ever answered with a damaged entry
        proc = serve(port, cache_dir, f"{upstream.url}/v1", "replay")
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(round_ * 100, round_ * 100 + 60):
                    async with session.post(f"http://127.0.0.1:{port}{CHAT}", data=body(i),
                                            headers={"Content-Type": "application/json"}) as r:
                        data = await r.read()
                        if i in answered:
                            assert r.status == 200 and r.headers["X-Cache"] == "HIT"
                            assert data == answered[i]
                        else:
                            assert r.status in (200, 504)
                        parsed = orjson.loads(data)
                        assert "choices" in parsed or parsed["error"]["code"] == "cache_miss"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
