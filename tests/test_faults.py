"""Upstream faults, one by one: the client gets a clear OpenAI-shaped error (or the upstream's
own), nothing is cached, no task or connection leaks, and the next request succeeds."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import sdk
from tests.harness import http
from tests.upstream import Scripted

MESSAGES = [{"role": "user", "content": "Faulty"}]


def proxy_tasks(proxy) -> int:
    """Tasks running the proxy's own code on its loop (the fake upstream shares the loop)."""

    async def count() -> int:
        return sum(
            1
            for t in asyncio.all_tasks()
            if "/proxy/" in getattr(getattr(t.get_coro(), "cr_code", None), "co_filename", "")
        )

    return proxy.bg.run(count())


def busy_connections(proxy) -> int:
    connector = proxy.pipeline.upstream.session.connector
    return sum(len(c) for c in connector._acquired_per_host.values())


def settled(proxy, baseline: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proxy_tasks(proxy) <= baseline and busy_connections(proxy) == 0:
            return True
        time.sleep(0.05)
    return False


def set_fault(upstream, fault: str) -> None:
    scripted = {
        "timeout_before_headers": Scripted(200, stall=3.0),
        "stall_mid_body": Scripted(200, body={"choices": []}, midway="stall"),
        "reset_mid_body": Scripted(200, body={"choices": [], "pad": "x" * 4000}, midway="drop"),
        "malformed_json_200": Scripted(200, body=b'{"choices": [{"index": 0, "mess'),
        "429_retry_after": Scripted(429, headers={"Retry-After": "11"}),
        "500": Scripted(500),
        "503": Scripted(503),
        "dropped_connection": Scripted(drop=True),
    }
    if fault in scripted:
        upstream.script(scripted[fault])
    elif fault == "reset_mid_stream":
        upstream.stream_fault = "drop"
    elif fault == "sse_without_done":
        upstream.stream_fault = "no_done"
    elif fault == "stall_mid_stream":
        upstream.stream_fault = "stall"


EXPECTED: dict[str, tuple[int, str | None]] = {  # status, proxy's error code (None: upstream's)
    "connect_refused": (502, "upstream_unreachable"),
    "timeout_before_headers": (504, "upstream_timeout"),
    "stall_mid_body": (504, "upstream_timeout"),
    "reset_mid_body": (502, "upstream_error"),
    "dropped_connection": (502, "upstream_error"),
    "malformed_json_200": (502, "upstream_invalid"),
    "429_retry_after": (429, None),
    "500": (500, None),
    "503": (503, None),
    "reset_mid_stream": (200, "upstream_incomplete"),
    "sse_without_done": (200, "upstream_incomplete"),
    "stall_mid_stream": (200, "upstream_incomplete"),
}
STREAMED = {"reset_mid_stream", "sse_without_done", "stall_mid_stream"}


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_upstream_fault(make_proxy, upstream, bg, fault):
    proxy = make_proxy(upstream={"timeout": 1.0})
    baseline = proxy_tasks(proxy)
    status, code = EXPECTED[fault]
    port = upstream.port
    if fault == "connect_refused":
        bg.run(upstream.stop())
    else:
        set_fault(upstream, fault)
    with sdk(proxy, max_retries=0) as client:
        with pytest.raises(openai.APIError) as err:
            if fault in STREAMED:
                for _ in client.chat.completions.create(
                    model="gpt-test", messages=MESSAGES, stream=True
                ):
                    pass
            else:
                client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        error: Any = err.value
        if fault in STREAMED:  # headers were sent: the error arrives as an SSE event
            assert error.code == code and "nothing was cached" in error.message
        else:
            assert error.status_code == status
            body = error.response.json()["error"]
            assert set(body) >= {"message", "type", "param", "code"}
            assert body["code"] == code
            if code is None:
                assert body["message"].startswith("scripted")  # the upstream's own, unchanged
        if fault == "429_retry_after":
            assert error.response.headers["retry-after"] == "11"

        assert proxy.counters["stores"] == 0
        assert settled(proxy, baseline), (proxy_tasks(proxy), busy_connections(proxy))

        upstream.stream_fault = None
        if fault == "connect_refused":
            bg.run(upstream.start(port))
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        assert raw.status_code == 200 and raw.headers["x-cache"] == "MISS"
    assert proxy.counters["stores"] == 1


def test_many_faults_in_a_row_leak_nothing(make_proxy, upstream):
    proxy = make_proxy(upstream={"timeout": 1.0})
    baseline = proxy_tasks(proxy)
    with sdk(proxy, max_retries=0) as client:
        for i in range(30):
            upstream.script(
                Scripted(drop=True)
                if i % 2
                else Scripted(200, body={"pad": "y" * 2000}, midway="drop")
            )
            with pytest.raises(openai.APIError):
                client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert settled(proxy, baseline)
    connector = proxy.pipeline.upstream.session.connector
    assert sum(len(c) for c in connector._conns.values()) <= 1


def test_dns_failure(make_proxy, upstream):
    """Nothing can succeed against a name that does not resolve; what must hold is that each
    request fails cleanly, nothing leaks, and the proxy stays up."""
    proxy = make_proxy(upstream={"base_url": "http://no-such-host.invalid/v1"})
    baseline = proxy_tasks(proxy)
    with sdk(proxy, max_retries=0) as client:
        for _ in range(3):
            with pytest.raises(openai.InternalServerError) as err:
                client.chat.completions.create(model="gpt-test", messages=MESSAGES)
            assert err.value.status_code == 502
            assert err.value.response.json()["error"]["code"] == "upstream_unreachable"
    assert settled(proxy, baseline)
    assert proxy.counters["stores"] == 0
    from tests.harness import http

    assert http(proxy.url, "GET", "/healthz")[0] == 200


def test_periodic_store_work_survives_failures(make_proxy, upstream, logs, monkeypatch):
    """A failing registry write or checkpoint is logged; the next second's work still runs."""
    monkeypatch.setattr("proxy.app.FLUSH_INTERVAL", 0.05)
    proxy = make_proxy()
    store = proxy.pipeline.store
    failures = {"note": 1, "checkpoint": 2}

    def failing(name: str, exc: Exception) -> Any:
        original = getattr(store, name)

        async def run(*args: Any) -> Any:
            if failures[name]:
                failures[name] -= 1
                raise exc
            return await original(*args)

        return run

    monkeypatch.setattr(store, "note", failing("note", RuntimeError("boom")))
    monkeypatch.setattr(store, "checkpoint", failing("checkpoint", OSError("disk gone")))
    with sdk(proxy) as client:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        deadline = time.monotonic() + 10
        while failures != {"note": 0, "checkpoint": 0} and time.monotonic() < deadline:
            time.sleep(0.05)
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "after the failures"}]
        )
    assert failures == {"note": 0, "checkpoint": 0}
    deadline = time.monotonic() + 10  # the flusher still runs: the second key is indexed
    while (
        not proxy.bg.run(store.recent("/v1/chat/completions", "gpt-test"))
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    recent = proxy.bg.run(store.recent("/v1/chat/completions", "gpt-test"))
    assert len(recent) == 1  # the first key's note was lost with the failed write
    assert logs.text.count("periodic store work failed") == 3


def upstream_lines(logs) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in logs.text.splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "seedproxy.upstream"]


def post(proxy, content: str) -> int:
    body = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": content}]})
    headers = {"Content-Type": "application/json"}  # no Authorization: the URL carries one
    return http(proxy.url, "POST", "/v1/chat/completions", body=body, headers=headers)[0]


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_an_unreachable_upstream_is_logged_once_per_streak_without_its_password(
    make_proxy, upstream, logs, bg
):
    base = f"http://team:up-secret@127.0.0.1:{upstream.port}/v1"
    proxy = make_proxy(upstream={"base_url": base})
    assert post(proxy, "q0") == 200
    bg.run(upstream.stop())
    assert [post(proxy, f"q{i}") for i in (1, 2, 3)] == [502] * 3
    bg.run(upstream.start(upstream.port))
    assert post(proxy, "q4") == 200
    bg.run(upstream.stop())
    assert post(proxy, "q5") == 502
    lines = upstream_lines(logs)
    assert [(line["level"], line["msg"]) for line in lines] == [
        ("warning", "upstream failing; logged again only after it answers"),
        ("info", "upstream answers again"),
        ("warning", "upstream failing; logged again only after it answers"),
    ]
    shown = f"http://***@127.0.0.1:{upstream.port}/v1"
    assert all(line["upstream"] == shown for line in lines)
    assert shown in lines[0]["error"] and lines[0]["code"].startswith("upstream_")
    assert "up-secret" not in logs.text


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_an_upstream_that_times_out_is_logged_once(make_proxy, upstream, logs):
    proxy = make_proxy(upstream={"timeout": 0.3})
    upstream.script(Scripted(200, stall=2.0), Scripted(200, stall=2.0))
    assert [post(proxy, "slow"), post(proxy, "slower")] == [504, 504]
    lines = upstream_lines(logs)
    assert [(line["level"], line["code"]) for line in lines] == [("warning", "upstream_timeout")]
    assert lines[0]["upstream"] == f"{upstream.url}/v1"


def test_shutting_down_does_not_wait_on_a_flush_that_swallowed_its_cancellation(proxy):
    """A store client may swallow the cancellation that lands in it (once in twenty runs
    a Redis flush did, and stopping the server waited for ever): the flusher stops anyway."""
    entered = threading.Event()

    async def swallowing() -> None:  # as such a client's call does
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return

    proxy.pipeline.flush = swallowing
    assert entered.wait(10), "the flusher never ran"
    proxy.bg.run(proxy._stop(), timeout=10)  # the next flush would sleep an hour
