"""Streamed chat completions through the official SDK: tee on a miss, synthesized on a hit,
cross-served losslessly with non-streamed requests, and never stored when incomplete."""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp
import openai
import orjson
import pytest

from proxy.sse import EventSplitter, parse_event
from tests.conftest import async_sdk, sdk
from tests.harness import http

pytestmark = pytest.mark.every_store

MESSAGES = [{"role": "user", "content": "Tell me something"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
]
CASES = {
    "text": {},
    "tool_call": {"tools": TOOLS},
    "n2": {"n": 2},
    "refusal": {"messages": [{"role": "user", "content": "please [refuse] this"}]},
}


def summary(completion) -> list[tuple]:
    """What a client reads from a completion, per choice."""
    return [
        (
            c.index,
            c.message.content,
            c.message.refusal,
            c.finish_reason,
            [(t.id, t.function.name, t.function.arguments) for t in c.message.tool_calls or []],
        )
        for c in sorted(completion.choices, key=lambda c: c.index)
    ]


def sse_payloads(body: bytes) -> list[bytes]:
    return [parse_event(raw)[1] for raw in EventSplitter().feed(body)]


@pytest.mark.parametrize("case", list(CASES))
def test_sdk_stream_helper_rebuilds_the_same_answer_from_a_hit(client, upstream, case):
    args = {"model": "gpt-test", "messages": MESSAGES} | CASES[case]
    with client.chat.completions.stream(**args) as stream:
        miss = stream.get_final_completion()
    assert len(upstream.chat_calls) == 1
    with client.chat.completions.stream(**args) as stream:
        hit = stream.get_final_completion()
    assert len(upstream.chat_calls) == 1
    assert summary(hit) == summary(miss)
    assert hit.system_fingerprint == miss.system_fingerprint == "fp_one"
    # the same request without streaming is served from the entry the stream recorded
    plain = client.chat.completions.with_raw_response.create(**args)
    assert plain.headers["x-cache"] == "HIT"
    assert summary(plain.parse()) == summary(miss)
    if case == "tool_call":
        assert orjson.loads(hit.choices[0].message.tool_calls[0].function.arguments)["days"] >= 1
    if case == "n2":
        assert len(hit.choices) == 2
    if case == "refusal":
        assert hit.choices[0].message.refusal == "I can't help with that."


@pytest.mark.parametrize("case", list(CASES))
def test_stream_iteration_from_a_hit_recorded_without_streaming(client, upstream, case):
    args = {"model": "gpt-test", "messages": MESSAGES} | CASES[case]
    recorded = client.chat.completions.create(**args)
    raw = client.chat.completions.with_raw_response.create(**args, stream=True)
    assert raw.headers["x-cache"] == "HIT"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert len(upstream.chat_calls) == 1
    contents: dict[int, str] = {}
    refusals: dict[int, str] = {}
    finish: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            contents[choice.index] = contents.get(choice.index, "") + (choice.delta.content or "")
            refusals[choice.index] = refusals.get(choice.index, "") + (choice.delta.refusal or "")
            for call in choice.delta.tool_calls or []:
                arguments[call.index] = arguments.get(call.index, "") + (
                    call.function.arguments or ""
                )
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    for choice in recorded.choices:
        assert contents[choice.index] == (choice.message.content or "")
        assert refusals[choice.index] == (choice.message.refusal or "")
        assert finish[choice.index] == choice.finish_reason
    if case == "tool_call":
        assert arguments[0] == recorded.choices[0].message.tool_calls[0].function.arguments
    if case == "text":
        assert len(chunks) > 3  # not collapsed into one chunk


async def test_async_streaming_miss_then_hit(proxy, upstream):
    async with async_sdk(proxy) as client:
        args = {"model": "gpt-test", "messages": MESSAGES, "tools": TOOLS}
        async with client.chat.completions.stream(**args) as stream:
            miss = await stream.get_final_completion()
        stream = await client.chat.completions.create(**args, stream=True)
        chunks = [chunk async for chunk in stream]
    assert len(upstream.chat_calls) == 1
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert arguments == miss.choices[0].message.tool_calls[0].function.arguments


def test_usage_chunk_exactly_when_asked(client, upstream, proxy):
    args = {"model": "gpt-test", "messages": MESSAGES, "stream": True}
    with_usage = list(
        client.chat.completions.create(**args, stream_options={"include_usage": True})
    )
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 18
    # hit, asked: the same usage chunk; not asked: none at all
    hit = list(client.chat.completions.create(**args, stream_options={"include_usage": True}))
    assert hit[-1].choices == [] and hit[-1].usage == with_usage[-1].usage
    _status, headers, body = http(
        proxy.url,
        "POST",
        "/v1/chat/completions",
        body=orjson.dumps({"model": "gpt-test", "messages": MESSAGES, "stream": True}),
    )
    assert headers["X-Cache"] == "HIT"
    payloads = [p for p in sse_payloads(body) if p != b"[DONE]"]
    assert all(orjson.loads(p)["choices"] for p in payloads)
    assert all("usage" not in orjson.loads(p) for p in payloads)
    assert sse_payloads(body)[-1] == b"[DONE]"
    assert len(upstream.chat_calls) == 1


def test_lossless_cross_serving_of_unknown_fields(client, upstream):
    upstream.extra_fields = {
        "reasoning_content": "First I think, then I answer.",
        "annotations": [
            {
                "type": "url_citation",
                "url_citation": {
                    "url": "https://example.com",
                    "title": "Ex",
                    "start_index": 0,
                    "end_index": 3,
                },
            }
        ],
        "audio": {"id": "audio_1", "data": "AAAA", "transcript": "hi", "expires_at": 1700000000},
    }
    base = {"model": "gpt-test", "messages": MESSAGES, "logprobs": True}
    direct = upstream.completion(base | {"seed": 12345})

    def strip(answer: dict) -> dict:
        return {k: v for k, v in answer.items() if k not in ("id", "created")}

    # recorded streamed -> served as JSON: every field the stream carried is there
    with client.chat.completions.stream(**base, stream_options={"include_usage": True}) as s:
        s.get_final_completion()
    plain = client.chat.completions.with_raw_response.create(**base)
    assert plain.headers["x-cache"] == "HIT"
    assert strip(orjson.loads(plain.content)) == strip(direct)

    # recorded as JSON -> served as a stream: the SDK folds it back into the same message
    other = base | {"messages": [{"role": "user", "content": "second prompt"}]}
    recorded = client.chat.completions.create(**other)
    with client.chat.completions.stream(**other) as s:
        hit = s.get_final_completion()
    message = hit.choices[0].message.to_dict()
    for key, value in upstream.extra_fields.items():
        assert message[key] == value, key
    assert hit.choices[0].logprobs.to_dict() == recorded.choices[0].logprobs.to_dict()
    assert hit.service_tier == recorded.service_tier == "default"
    assert len(upstream.chat_calls) == 2


async def test_first_event_reaches_the_client_before_the_upstream_sends_the_second(proxy, upstream):
    upstream.gate = threading.Event()
    body = orjson.dumps({"model": "gpt-test", "messages": MESSAGES, "stream": True})
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy.base_url}/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        assert response.headers["X-Cache"] == "MISS"
        # the upstream holds its second event until the gate opens: what arrives now
        # can only have been passed on without waiting for the rest
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 20)
        assert not upstream.gate.is_set()
        assert orjson.loads(parse_event(first)[1])["choices"][0]["delta"]["role"] == "assistant"
        upstream.gate.set()
        rest = await response.read()
        key = response.headers["X-Seedproxy-Key"]
    assert sse_payloads(rest)[-1] == b"[DONE]"
    # stored before [DONE] was passed on: the entry exists the moment the client has it all
    stored = await asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(proxy.pipeline.store.variants(key), proxy.bg.loop)
    )
    assert len(stored) == 1


def _leave_after_first_event(proxy, upstream, logs) -> None:
    upstream.gate = threading.Event()
    upstream.stream_finished.clear()

    async def go() -> None:
        body = orjson.dumps({"model": "gpt-test", "messages": MESSAGES, "stream": True})
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                f"{proxy.base_url}/chat/completions",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            await asyncio.wait_for(response.content.readuntil(b"\n\n"), 20)
            response.close()  # the client goes away mid-stream

    asyncio.run(go())
    deadline = time.monotonic() + 10  # the proxy notices while the upstream still holds
    while "client left mid-stream" not in logs.text:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    upstream.gate.set()


def _wait_for_store(proxy, expected: int) -> None:
    for _ in range(200):
        if proxy.counters["stores"] >= expected:
            return
        threading.Event().wait(0.02)


def test_client_leaving_mid_stream_still_stores_the_answer(client, proxy, upstream, logs):
    _leave_after_first_event(proxy, upstream, logs)
    assert upstream.stream_finished.wait(20)
    _wait_for_store(proxy, 1)
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    assert raw.headers["x-cache"] == "HIT"
    assert len(upstream.chat_calls) == 1
    assert http(proxy.url, "GET", "/healthz")[0] == 200


def test_client_leaving_without_complete_on_disconnect_stores_nothing(make_proxy, upstream, logs):
    proxy = make_proxy(cache={"complete_on_disconnect": False})
    _leave_after_first_event(proxy, upstream, logs)
    with sdk(proxy) as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    assert raw.headers["x-cache"] == "MISS"
    assert proxy.counters["stores"] == 1


@pytest.mark.parametrize("fault", ["drop", "no_done", "error_event", "stall"])
def test_incomplete_streams_are_never_stored(make_proxy, upstream, logs, fault):
    proxy = make_proxy(upstream={"timeout": 1.0})
    upstream.stream_fault = fault
    with sdk(proxy, max_retries=0) as client:
        with pytest.raises(openai.APIError):
            for _ in client.chat.completions.create(
                model="gpt-test", messages=MESSAGES, stream=True
            ):
                pass
        upstream.stream_fault = None
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    assert raw.headers["x-cache"] == "MISS"
    assert proxy.counters["stores"] == 1
    assert "incomplete upstream stream; not cached" in logs.text
    assert http(proxy.url, "GET", "/healthz")[0] == 200


def test_concurrent_streamed_misses_share_one_upstream_call(proxy, upstream):
    upstream.gate = threading.Event()

    async def one(session: aiohttp.ClientSession, stream: bool) -> bytes:
        body = orjson.dumps({"model": "gpt-test", "messages": MESSAGES, "stream": stream})
        async with session.post(f"{proxy.base_url}/chat/completions", data=body) as r:
            return await r.read()

    async def go() -> list[bytes]:
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(one(session, i % 2 == 0)) for i in range(10)]
            # the counter lives on the proxy's loop in another thread: poll it
            while proxy.counters["coalesced"] < 9:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            upstream.gate.set()
            return await asyncio.gather(*tasks)

    bodies = asyncio.run(go())
    assert len(upstream.chat_calls) == 1
    contents = set()
    for i, body in enumerate(bodies):
        if i % 2 == 0:
            deltas = [
                orjson.loads(p)["choices"][0]["delta"] for p in sse_payloads(body) if p != b"[DONE]"
            ]
            contents.add("".join(d.get("content") or "" for d in deltas))
        else:
            contents.add(orjson.loads(body)["choices"][0]["message"]["content"])
    assert len(contents) == 1
