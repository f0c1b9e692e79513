"""A store outage costs no request: a real redis-server killed and started again under a
running proxy, and a disk store that cannot write."""

from __future__ import annotations

import orjson
import pytest

from proxy.store import StoreError
from tests.conftest import free_port, sdk, start_redis
from tests.harness import http
from tests.test_chat import MESSAGES, create
from tests.test_faults import proxy_tasks, settled

pytestmark = pytest.mark.every_store


@pytest.fixture
def redis_down_and_up(tmp_path):
    """A redis-server of this test's own, with ways to kill it and start it again."""
    port = free_port()
    state = {"proc": start_redis(port, tmp_path)}

    def kill() -> None:
        state["proc"].kill()
        state["proc"].wait(10)

    def restart() -> None:
        state["proc"] = start_redis(port, tmp_path)

    yield f"redis://127.0.0.1:{port}/0", kill, restart
    state["proc"].kill()
    state["proc"].wait(10)


def ask(proxy, content: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    body = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": content}]})
    status, got, raw = http(
        proxy.url,
        "POST",
        "/v1/chat/completions",
        body=body,
        headers={"Content-Type": "application/json", **headers},
    )
    return status, dict(got), raw


def health(proxy) -> dict[str, str]:
    status, _, raw = http(proxy.url, "GET", "/healthz")
    assert status == 200
    return orjson.loads(raw)


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_redis_killed_and_restarted(make_proxy, upstream, logs, redis_down_and_up):
    url, kill, restart = redis_down_and_up
    proxy = make_proxy(cache={"backend": "redis", "redis_url": url})
    replayer = make_proxy(cache={"backend": "redis", "redis_url": url, "mode": "replay"})
    assert ask(proxy, "before")[1]["X-Cache"] == "MISS"
    assert ask(proxy, "before")[1]["X-Cache"] == "HIT"
    baseline = proxy_tasks(proxy)
    kill()
    calls = len(upstream.chat_calls)
    answers = [ask(proxy, "before") for _ in range(3)] + [ask(proxy, "during")]
    for status, headers, raw in answers:  # live answers, uncached
        assert status == 200 and headers["X-Cache"] == "MISS", raw
        assert orjson.loads(raw)["choices"][0]["message"]["content"]
    assert len(upstream.chat_calls) == calls + 4
    with sdk(proxy) as client:  # streamed too
        chunks = list(
            client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert health(proxy)["store"] == "unavailable"
    status, _, raw = http(proxy.url, "GET", "/_seedproxy/stats")
    assert status == 200 and orjson.loads(raw)["store"] == "unavailable"
    # replay can only answer from the store: 503, in the OpenAI shape, retry later
    status, headers, raw = ask(replayer, "before")
    assert status == 503 and headers["x-should-retry"] == "true"
    error = orjson.loads(raw)["error"]
    assert error["code"] == "store_unavailable" and "unavailable" in error["message"]
    warnings = [line for line in logs.text.splitlines() if "cache store unavailable" in line]
    assert len(warnings) == 2  # once per outage and proxy (two here), not per request
    assert settled(proxy, baseline)  # nothing left running or connected
    restart()
    assert health(proxy)["store"] == "ok"
    # caching resumes by itself: the restarted Redis is empty
    assert ask(proxy, "after")[1]["X-Cache"] == "MISS"
    assert ask(proxy, "after")[1]["X-Cache"] == "HIT"
    assert ask(replayer, "after")[1]["X-Cache"] == "HIT"
    assert "cache store available again" in logs.text


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_a_disk_store_that_cannot_write(proxy, upstream, logs, monkeypatch):
    async def full(entry) -> None:
        raise StoreError("cache.dir: [Errno 28] No space left on device")

    monkeypatch.setattr(proxy.pipeline.store, "put", full)
    for _ in range(2):  # answered live each time, stored never
        status, headers, raw = ask(proxy, "disk full")
        assert status == 200 and headers["X-Cache"] == "MISS", raw
    assert len(upstream.chat_calls) == 2
    with sdk(proxy) as client:
        chunks = list(
            client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        )
    assert chunks[-1].choices[0].finish_reason == "stop"  # the stream was not cut
    assert "No space left" in logs.text
    monkeypatch.undo()  # space again
    assert ask(proxy, "disk full")[1]["X-Cache"] == "MISS"
    assert ask(proxy, "disk full")[1]["X-Cache"] == "HIT"
    assert create(sdk(proxy))[0]["x-cache"] == "MISS"
