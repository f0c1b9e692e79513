"""An answered miss survives SIGKILL; a killed writer never leaves a servable half entry."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import aiohttp
import orjson
import pytest

from tests.harness import ProxyServer, clean_env, free_port, http, proxy_settings, serve_argv
from tests.test_tools import cli

CHAT = "/v1/chat/completions"


def serve(port: int, cache_dir, upstream_url: str, mode: str) -> subprocess.Popen:
    env = clean_env()
    proc = subprocess.Popen(
        serve_argv(port, "--cache-dir", str(cache_dir), "--upstream", upstream_url, "--mode", mode),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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


async def _post(
    session: aiohttp.ClientSession,
    port: int,
    i: int,
    answered: dict[int, bytes],
    ten_answered: asyncio.Event,
) -> None:
    try:
        async with session.post(
            f"http://127.0.0.1:{port}{CHAT}",
            data=body(i),
            headers={"Content-Type": "application/json"},
        ) as r:
            data = await r.read()
            if r.status == 200:
                answered[i] = data
                if len(answered) >= 10:
                    ten_answered.set()
    except aiohttp.ClientError:
        pass


KILLS = 20


def stats(cache_dir) -> dict:
    """`seedproxy stats` as a user runs it after a crash (in this process: see ``cli``)."""
    result = cli("stats", "--json", "--cache-dir", str(cache_dir))
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


async def test_answered_requests_survive_sigkill(tmp_path, upstream, bg):
    """A `seedproxy serve` killed twenty times while it records: after each kill, stats
    counts every answered request, and the proxy (started in this process on the same
    directory, in replay mode) serves each one the bytes it was answered, and nothing
    damaged."""
    upstream.latency = 0.02
    port, cache_dir = free_port(), tmp_path / "cache"
    for round_ in range(KILLS):
        proc = serve(port, cache_dir, f"{upstream.url}/v1", "record")
        # the same settings, in replay mode, on a port of its own (``port`` is taken now)
        replay = proxy_settings(cache_dir, upstream.url, cache={"mode": "replay"})
        answered: dict[int, bytes] = {}
        ten_answered = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            tasks = [
                asyncio.create_task(_post(session, port, round_ * 100 + i, answered, ten_answered))
                for i in range(60)
            ]
            await ten_answered.wait()
            proc.send_signal(signal.SIGKILL)
            await asyncio.gather(*tasks)
        proc.wait()
        assert answered
        assert (await asyncio.to_thread(stats, cache_dir))["entries"] >= len(answered)

        # after the crash: every answered request is a hit with the same bytes, and no
        # request is ever answered with a damaged entry
        server = await asyncio.to_thread(ProxyServer(bg, replay).start)
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(round_ * 100, round_ * 100 + 60):
                    async with session.post(
                        f"{server.url}{CHAT}",
                        data=body(i),
                        headers={"Content-Type": "application/json"},
                    ) as r:
                        data = await r.read()
                        if i in answered:
                            assert r.status == 200 and r.headers["X-Cache"] == "HIT"
                            assert data == answered[i]
                        else:
                            assert r.status in (200, 504)
                        parsed = orjson.loads(data)
                        assert "choices" in parsed or parsed["error"]["code"] == "cache_miss"
        finally:
            await asyncio.to_thread(server.stop)


def corrupt(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x00garbage" * 512)


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_damaged_cache_file_is_a_clear_error_not_a_traceback(tmp_path, upstream, bg, how):
    """`seedproxy serve`, `stats` and `export` on a cache whose entries file is damaged
    (recorded by the proxy app in this process) each stop with one line naming the file
    and the recovery, which then works; serve in its own process, as a user starts it,
    stats and export in this one (see ``cli``: a traceback would raise here)."""
    port, cache_dir = free_port(), tmp_path / "cache"
    recorder = ProxyServer(bg, proxy_settings(cache_dir, upstream.url)).start()
    for i in range(5):
        answer = http(recorder.url, "POST", CHAT, body(i), {"Content-Type": "application/json"})
        assert answer[0] == 200
    recorder.stop()
    damaged = cache_dir / "entries" / "cache.db"
    corrupt(damaged, how)
    for wal in cache_dir.glob("entries/cache.db-*"):
        wal.unlink()
    serving = subprocess.run(
        serve_argv(port, "--cache-dir", str(cache_dir)),
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    stats_and_export = [
        cli(*args, "--cache-dir", str(cache_dir)) for args in (["stats"], ["export", "-"])
    ]
    for result in (serving, *stats_and_export):
        assert result.returncode == 2, (result.args, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert str(damaged) in lines[0] and "move the directory" in lines[0]
    # the documented recovery: move the directory aside and start again
    cache_dir.rename(tmp_path / "damaged")
    proc = serve(port, cache_dir, f"{upstream.url}/v1", "record")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
