"""Issue 18, item 1: nothing on the event loop grows with stored data. Large drift diffs are
bounded where they are made and where they are drawn, the dashboard draws them off the
loop, and /_seedproxy/drift pages through events instead of loading every one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
from typing import Any

import openai
import orjson
import pytest

from proxy import drift, reports
from proxy.drift import DIFF_CHARS, TRUNCATED, bounded, compare
from proxy.store.memory import MemoryStore
from tests.conftest import sdk
from tests.harness import FAKE_KEY, Serve, chat_completion, free_port, http
from tests.upstream import Scripted

pytestmark = pytest.mark.serial


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


# -- issue 29, item 3: comparing is bounded work, in a thread of its own -------------------


def _cjk(seed: int, n: int) -> str:
    """``n`` characters from 500 common-looking CJK ones: each repeats too rarely for
    difflib's junk heuristic, which is what made comparing quadratic."""
    rng = random.Random(seed)
    return "".join(chr(0x4E00 + rng.randrange(500)) for _ in range(n))


def test_comparing_gives_difflib_small_parts_only(monkeypatch):
    sizes: list[tuple[int, int]] = []
    real = drift.difflib.SequenceMatcher

    def measured(junk: Any, a: Any, b: Any, *args: Any) -> Any:
        sizes.append((len(a), len(b)))
        return real(junk, a, b, *args)

    monkeypatch.setattr(drift.difflib, "SequenceMatcher", measured)
    many_lines = "\n".join(str(i % 160) for i in range(30_000))
    for a, b in [
        (_cjk(1, 64_000), _cjk(2, 64_000)),  # one line each
        (many_lines, many_lines[::-1]),  # thousands of short lines
    ]:
        sizes.clear()
        result = compare(_outputs(a), _outputs(b))
        assert result is not None and 0 <= result.similarity < 0.1
        cached, live = drift.sides(result.diff)  # a correct diff, both sides whole
        assert cached == bounded(drift.render(_outputs(a)))
        assert live == bounded(drift.render(_outputs(b)))
        assert sizes and all(
            max(x, y) <= max(drift.MATCH_LINES, drift.MATCH_CHARS) for x, y in sizes
        )
        assert sum(x + y for x, y in sizes) <= drift.MATCH_BUDGET + 2 * drift.MATCH_LINES


def test_one_edit_in_a_long_answer_is_still_nearly_identical():
    text = " ".join(f"word{i % 97}" for i in range(10_000))
    edited = text[:30_000] + "#" + text[30_001:]
    result = compare(_outputs(text), _outputs(edited))
    assert result is not None and result.similarity > 0.999
    assert result.divergence == drift.divergence(text, edited)
    assert result.divergence.chars == 30_001


def test_a_verify_sample_is_compared_in_the_comparing_thread(make_proxy, upstream, monkeypatch):
    threads: list[str] = []
    real = drift.compare

    def watched(a: Any, b: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(a, b)

    monkeypatch.setattr(drift, "compare", watched)
    proxy = make_proxy(cache={"verify_rate": 1.0})
    with sdk(proxy) as client:
        ask = {"model": "gpt-v", "messages": [{"role": "user", "content": "verify me"}]}
        client.chat.completions.create(**ask)  # recorded
        upstream.nondeterministic = True
        client.chat.completions.create(**ask, extra_headers={"Cache-Control": "no-cache"})
        client.chat.completions.create(**ask)  # a hit, verified in the background
    deadline = time.monotonic() + 30
    while len(threads) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the verify sample runs after the hit was answered
    assert len(threads) == 2 and all(t.startswith("seedproxy-compare") for t in threads)


def test_a_refresh_of_a_huge_nondeterministic_answer_does_not_stall_healthz(upstream, tmp_path):
    """A real `seedproxy serve`: one refresh of a 64,000-character CJK answer that differs
    from the stored one (difflib froze the loop 7 s on it) while /healthz is polled."""
    first, second = _cjk(1, 64_000), _cjk(1, 100) + _cjk(3, 63_900)
    upstream.script(
        Scripted(200, chat_completion(first, model="gpt-cjk")),
        Scripted(200, chat_completion(second, model="gpt-cjk")),
    )
    served = Serve(free_port(), upstream, {}, "--cache-dir", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{served.port}"
    try:
        ask = {"model": "gpt-cjk", "messages": [{"role": "user", "content": "write"}]}
        with openai.OpenAI(base_url=url + "/v1", api_key=FAKE_KEY) as client:
            client.chat.completions.create(**ask)  # recorded
            polls: list[tuple[float, float]] = []
            done = threading.Event()

            def poll() -> None:
                while not done.is_set():
                    began = time.monotonic()
                    assert http(url, "GET", "/healthz", timeout=30)[0] == 200
                    polls.append((began, time.monotonic()))
                    time.sleep(0.01)

            poller = threading.Thread(target=poll)
            poller.start()
            began = time.monotonic()
            raw = client.chat.completions.with_raw_response.create(
                **ask, extra_headers={"Cache-Control": "no-cache"}
            )
            ended = time.monotonic()
            done.set()
            poller.join()
        assert raw.headers["X-Cache"] == "REFRESH"
        assert raw.parse().choices[0].message.content == second
        assert any(began <= start <= ended for start, _ in polls)  # polled meanwhile
        waits = [end - start for start, end in polls]
        assert max(waits) < 1.0, waits  # a liveness bound, not a speed figure
        (event,) = orjson.loads(http(url, "GET", "/_seedproxy/drift")[2])["drift"]
    finally:
        served.stop()
    assert (event["divergence_chars"], event["shared_prefix_chars"]) == (101, 100)
    assert event["divergence_words"] == 1 and event["similarity"] < 0.1


def test_a_drift_page_ends_once_its_diffs_are_large():
    store = MemoryStore()
    diff = "-" + "x" * (reports.PAGE_DIFF_CHARS // 5)
    for i in range(20):
        asyncio.run(store.add_event({"kind": "drift", "id": str(i), "time": i, "diff": diff}))
    page, after = asyncio.run(reports.drift_page(store, limit=100))
    assert [e["id"] for e in page] == ["19", "18", "17", "16", "15"] and after == 5
    page, after = asyncio.run(reports.drift_page(store, limit=100, offset=after))
    assert page[0]["id"] == "14" and after == 10


def test_explaining_a_body_of_many_parts_is_done_off_the_loop(proxy, monkeypatch):
    threaded: list[str] = []
    real = asyncio.to_thread

    async def to_thread(fn: Any, *args: Any) -> Any:
        threaded.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args)

    monkeypatch.setattr("proxy.admin.asyncio.to_thread", to_thread)
    many = b'{"model":"gpt-a","messages":[%s]}' % b",".join([b'{"role":"user"}'] * 3_000)
    small = orjson.dumps({"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]})
    answers = {}
    for name, body in (("small", small), ("many", many)):
        status, _, raw = http(proxy.url, "POST", "/_seedproxy/explain", body)
        assert status == 200, raw
        answers[name] = orjson.loads(raw)
    assert threaded == ["explained"]  # the small body was explained on the loop
    assert answers["many"]["key"] != answers["small"]["key"]
