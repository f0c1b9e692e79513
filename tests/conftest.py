from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.harness import FAKE_KEY, BackgroundLoop, LogCapture, ProxyServer, proxy_settings
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


@pytest.fixture
def make_proxy(bg: BackgroundLoop, upstream: FakeUpstream, cache_dir: Path,
               logs: LogCapture) -> Iterator[Callable[..., ProxyServer]]:
    started: list[ProxyServer] = []

    def make(**sections: dict[str, Any]) -> ProxyServer:
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
