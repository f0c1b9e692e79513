"""Issue 18, item 2: output is bounded by what was stored, and upstream answers by
``upstream.max_response``. A streamed hit states bulky and unknown top-level fields once;
an answer past the bound is a 502 ``upstream_too_large`` (an error event for a streamed
client) and nothing is stored."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from proxy.sse import REPEATED_BYTES, EventSplitter, parse_event, synthesize
from tests.conftest import sdk
from tests.harness import http
from tests.test_chat import MESSAGES
from tests.test_sse import fold
from tests.upstream import Scripted

HEADERS = {"Content-Type": "application/json"}
BIG_MODEL = "m" * 100_000


def _completion(model: str, content: str, **top: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "system_fingerprint": "fp_1",
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        **top,
    }


LONG = " ".join(f"word{i}" for i in range(2000))  # about 400 chunks


@pytest.mark.parametrize("usage", [False, True])
def test_a_bulky_model_and_unknown_fields_are_stated_once_and_fold_back(usage):
    completion = _completion(BIG_MODEL, LONG, x_vendor={"blob": "v" * 50_000})
    raw = synthesize(completion, include_usage=usage)
    stored = len(orjson.dumps(completion))
    assert len(raw) < 3 * stored
    assert raw.count(BIG_MODEL.encode()) == 1
    assert raw.count(b'"x_vendor"') == 1
    expected = completion if usage else {k: v for k, v in completion.items() if k != "usage"}
    assert fold(raw).result() == expected


def test_small_chunk_fields_are_repeated_as_the_api_does():
    raw = synthesize(_completion("gpt-4o", LONG), include_usage=True)
    chunks = [orjson.loads(parse_event(e)[1] or b"") for e in EventSplitter().feed(raw)[:-1]]
    assert len(chunks) > 100
    for chunk in chunks:
        assert chunk["model"] == "gpt-4o" and chunk["id"] == "chatcmpl-1"
        assert chunk["system_fingerprint"] == "fp_1" and chunk["object"] == "chat.completion.chunk"
        assert "usage" in chunk
    # every chunk after the first stays small whatever the completion's top level holds
    big = _completion("gpt-4o", LONG, id="x" * REPEATED_BYTES)
    later = EventSplitter().feed(synthesize(big, include_usage=False))[1:-1]
    assert max(len(e) for e in later) < 400


def test_text_completions_state_unknown_fields_once():
    completion = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": BIG_MODEL,
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "text": LONG, "logprobs": None, "finish_reason": "stop"}],
        "x_vendor": "v" * 1000,
    }
    raw = synthesize(completion, include_usage=False)
    assert raw.count(BIG_MODEL.encode()) == 1 and raw.count(b"x_vendor") == 1
    assert fold(raw, chat=False).result() == completion


def test_a_streamed_hit_of_a_100kb_model_stays_near_the_stored_size(proxy, upstream):
    upstream.script(Scripted(status=200, body=_completion(BIG_MODEL, LONG)))
    body = {"model": "gpt-big", "messages": [{"role": "user", "content": "big model"}]}
    status, _, stored = http(proxy.url, "POST", "/v1/chat/completions", orjson.dumps(body), HEADERS)
    assert status == 200
    asked = {**body, "stream": True, "stream_options": {"include_usage": True}}
    raw = orjson.dumps(asked)
    status, headers, streamed = http(proxy.url, "POST", "/v1/chat/completions", raw, HEADERS)
    assert status == 200 and headers["X-Cache"] == "HIT"
    assert len(streamed) < 3 * len(stored)
    assert fold(streamed).result() == orjson.loads(stored)


def _too_big_answer(upstream: Any) -> None:
    upstream.extra_fields = {"reasoning_content": "r" * 20_000}


def test_a_non_streamed_answer_past_max_response_is_502_and_not_stored(make_proxy, upstream):
    proxy = make_proxy(upstream={"max_response": 8000})
    _too_big_answer(upstream)
    body = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]})
    for n in (1, 2):
        status, _, answer = http(proxy.url, "POST", "/v1/chat/completions", body, HEADERS)
        assert status == 502
        assert orjson.loads(answer)["error"]["code"] == "upstream_too_large"
        assert len(upstream.chat_calls) == n  # nothing stored: the upstream is asked again
    upstream.extra_fields = {}
    status, headers, _ = http(proxy.url, "POST", "/v1/chat/completions", body, HEADERS)
    assert status == 200 and headers["X-Cache"] == "MISS"


def test_a_raw_answer_past_max_response_is_refused_however_it_is_sent(make_proxy, upstream):
    proxy = make_proxy(upstream={"max_response": 1000})
    answer = orjson.dumps(_completion("gpt-test", "y " * 2000))
    upstream.script(Scripted(status=200, body=answer))
    body = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "raw"}]})
    status, _, got = http(proxy.url, "POST", "/v1/chat/completions", body, HEADERS)
    assert status == 502 and b"upstream_too_large" in got
    assert b"y y y" not in got


def test_a_streamed_answer_past_max_response_ends_in_an_error_event(make_proxy, upstream):
    proxy = make_proxy(upstream={"max_response": 8000})
    _too_big_answer(upstream)
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "s"}], "stream": True}
    for n in (1, 2):
        raw = orjson.dumps(body)
        status, _, streamed = http(proxy.url, "POST", "/v1/chat/completions", raw, HEADERS)
        assert status == 200  # the stream had started
        last = parse_event(EventSplitter().feed(streamed)[-1])[1] or b""
        assert orjson.loads(last)["error"]["code"] == "upstream_too_large"
        assert b"[DONE]" not in streamed
        assert len(upstream.chat_calls) == n


def test_reading_on_after_the_client_left_is_bounded_in_time(make_proxy, upstream, logs):
    """complete_on_disconnect reads on for the store, but no longer than upstream.timeout
    after the client left: a trickling upstream is not read (and held) forever."""
    from tests.test_streaming import _leave_after_first_event

    proxy = make_proxy(upstream={"timeout": 1.0})
    upstream.chunk_delay = 0.25  # each event well within the read timeout; all of them not
    _leave_after_first_event(proxy, upstream, logs)
    deadline = time.monotonic() + 30  # the upstream would take 5 s more; stopped after 1
    while "the client left and the upstream did not finish in time" not in logs.text:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not upstream.stream_finished.is_set()  # cut before its end
    upstream.chunk_delay = 0.0
    with sdk(proxy) as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    assert raw.headers["x-cache"] == "MISS"  # the abandoned answer was not stored
