"""Issue 18, item 1: nothing on the event loop grows with stored data. Large drift diffs are
bounded where they are made and where they are drawn, the dashboard draws them off the
loop, and /_seedproxy/drift pages through events instead of loading every one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import orjson

from proxy import reports
from proxy.drift import DIFF_CHARS, TRUNCATED, bounded, compare
from proxy.store.memory import MemoryStore
from tests.conftest import sdk
from tests.harness import http


def _outputs(text: str) -> list[dict[str, Any]]:
    return [
        {"index": 0, "content": text, "refusal": None, "tool_calls": [], "finish_reason": "stop"}
    ]


def test_a_drift_diff_keeps_a_bounded_part_of_huge_answers_and_says_so():
    huge_a = "\n".join(f"line {i} alpha" for i in range(50_000))
    huge_b = "\n".join(f"line {i} beta" for i in range(50_000))
    result = compare(_outputs(huge_a), _outputs(huge_b))
    assert result is not None
    assert len(result.diff) < 3 * DIFF_CHARS
    assert TRUNCATED in result.diff


def test_bounded_cuts_one_long_line_and_keeps_short_text_whole():
    assert bounded(["a", "b"], 10) == ["a", "b"]
    assert bounded(["x" * 50], 10) == ["x" * 10, TRUNCATED]


def test_a_page_of_drift_reads_only_what_it_returns():
    store = MemoryStore()
    for i in range(500):
        asyncio.run(store.add_event({"kind": "drift", "id": str(i), "model": "m", "time": i}))
    asked: list[tuple[int, int]] = []
    events = store.events

    async def counting(kind: str, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        asked.append((limit, offset))
        return await events(kind, limit, offset)

    store.events = counting  # type: ignore[method-assign]
    page, after = asyncio.run(reports.drift_page(store, limit=5))
    assert [e["id"] for e in page] == ["499", "498", "497", "496", "495"]
    assert asked == [(5, 0)] and after == 5
    page, after = asyncio.run(reports.drift_page(store, limit=5, offset=after))
    assert [e["id"] for e in page] == ["494", "493", "492", "491", "490"]
    page, after = asyncio.run(reports.drift_page(store, limit=10, offset=495))
    assert len(page) == 5 and after is None


def _drift_with_long_answers(proxy: Any, upstream: Any, count: int) -> None:
    upstream.content_lines = 300
    with sdk(proxy) as client:
        for i in range(count):
            messages = [{"role": "user", "content": f"essay {i}"}]
            client.chat.completions.create(model="gpt-long", messages=messages)
        upstream.nondeterministic = True
        for i in range(count):
            messages = [{"role": "user", "content": f"essay {i}"}]
            client.chat.completions.create(
                model="gpt-long", messages=messages, extra_headers={"Cache-Control": "no-cache"}
            )


def test_healthz_answers_while_dashboards_draw_large_diffs(make_proxy, upstream):
    proxy = make_proxy()
    _drift_with_long_answers(proxy, upstream, 3)
    events = orjson.loads(http(proxy.url, "GET", "/_seedproxy/drift")[2])["drift"]
    assert len(events) == 3 and events[0]["diff"].count("\n") > 300

    waits: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        pages = [
            pool.submit(http, proxy.url, "GET", "/_seedproxy/", None, None, 120) for _ in range(3)
        ]
        while not all(p.done() for p in pages):
            began = time.monotonic()
            status, _, _ = http(proxy.url, "GET", "/healthz", timeout=30)
            waits.append(time.monotonic() - began)
            assert status == 200
            time.sleep(0.02)
        bodies = [p.result()[2].decode() for p in pages]
    assert waits and max(waits) < 1.0, waits  # a behaviour bound (a frozen loop took 4-21 s)
    for body in bodies:
        assert body.count("class=event") == 3 and "diff truncated" in body


def test_the_drift_endpoint_pages(make_proxy, upstream):
    proxy = make_proxy()
    _drift_with_long_answers(proxy, upstream, 3)
    first = orjson.loads(http(proxy.url, "GET", "/_seedproxy/drift?limit=2")[2])
    assert len(first["drift"]) == 2 and first["next_offset"] == 2
    rest = orjson.loads(http(proxy.url, "GET", "/_seedproxy/drift?limit=2&offset=2")[2])
    assert len(rest["drift"]) == 1 and rest["next_offset"] is None
    ids = {e["id"] for e in first["drift"] + rest["drift"]}
    assert len(ids) == 3
    status, _, _ = http(proxy.url, "GET", "/_seedproxy/drift?offset=x")
    assert status == 400
