from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from tests.harness import (
    FAKE_KEY,
    BackgroundLoop,
    LogCapture,
    ProxyServer,
    free_port,
    proxy_settings,
)
from tests.rediscluster import Cluster
from tests.upstream import FakeUpstream


@pytest.fixture(scope="session")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture
def upstream(bg: BackgroundLoop) -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    bg.run(fake.start())
    yield fake
    bg.run(fake.stop())


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    yield capture
    capture.close()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """Debian's redis-server on 127.0.0.1:``port``, answering pings when this returns."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: the test command installs Debian's redis-server")
    proc = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    client.close()
    return proc


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port for the whole session."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real six-node Redis Cluster (three masters, three replicas) for the session, started
    by the first test that needs one."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server is missing: the test command installs Debian's redis-server")
    cluster = Cluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store a test runs against (parametrized by ``pytest_generate_tests``)."""
    return str(request.param)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests of what the store does (modules marked ``every_store``) run against disk and
    Redis; the rest, which only need somewhere to keep entries, run once, on disk. A test
    that names its backends itself (``parametrize("backend", ...)``) keeps them."""
    if "backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        if mark.args and "backend" in str(mark.args[0]):
            return
    every = metafunc.definition.get_closest_marker("every_store") is not None
    metafunc.parametrize("backend", ["disk", "redis"] if every else ["disk"], indirect=True)


@pytest.fixture
def store_config(backend: str, cache_dir: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The [cache] settings that select this test's store, emptied for the test."""
    if backend == "cluster":  # only for the tests that ask for it: a cluster is slow to start
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return {"backend": "redis", "redis_url": cluster.url, "redis_cluster": True}
    if backend == "redis":
        url = request.getfixturevalue("redis_server")
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        return {"backend": "redis", "redis_url": url}
    return {"backend": "disk", "dir": str(cache_dir)}


@pytest.fixture
def store_env(store_config: dict[str, Any]) -> dict[str, str]:
    """The same store selected through SEEDPROXY_* variables, for the CLI."""
    return {f"SEEDPROXY_CACHE_{k.upper()}": str(v) for k, v in store_config.items()}


@pytest.fixture
def make_proxy(
    bg: BackgroundLoop,
    upstream: FakeUpstream,
    cache_dir: Path,
    store_config: dict[str, Any],
    logs: LogCapture,
) -> Iterator[Callable[..., ProxyServer]]:
    started: list[ProxyServer] = []

    def make(**sections: dict[str, Any]) -> ProxyServer:
        sections["cache"] = {**store_config, **sections.get("cache", {})}
        server = ProxyServer(bg, proxy_settings(cache_dir, upstream.url, **sections)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def proxy(make_proxy: Callable[..., ProxyServer]) -> ProxyServer:
    return make_proxy()


def sdk(server: ProxyServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=FAKE_KEY, **kwargs)


def async_sdk(server: ProxyServer, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=FAKE_KEY, **kwargs)


@pytest.fixture
def client(proxy: ProxyServer) -> Iterator[openai.OpenAI]:
    with sdk(proxy) as c:
        yield c
