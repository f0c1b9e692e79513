"""The pure SSE parts: splitting, folding and synthesizing, checked with hypothesis."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sse import (
    CompletionAccumulator,
    EventSplitter,
    iter_events,
    merge_delta,
    parse_event,
    synthesize,
)

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
maybe_text = st.none() | text


@st.composite
def messages(draw):
    message = {"role": "assistant", "content": draw(maybe_text), "refusal": draw(maybe_text)}
    if draw(st.booleans()):
        message["reasoning_content"] = draw(text)
    if draw(st.booleans()):
        message["annotations"] = draw(
            st.lists(
                st.fixed_dictionaries({"type": st.just("url_citation"), "url": text}), max_size=2
            )
        )
    if draw(st.booleans()):
        message["audio"] = {
            "id": draw(text),
            "data": draw(text),
            "expires_at": draw(st.integers(0, 2**40)),
        }
    calls = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "id": text,
                    "type": st.just("function"),
                    "function": st.fixed_dictionaries({"name": text, "arguments": text}),
                }
            ),
            max_size=3,
        )
    )
    if calls:
        message["tool_calls"] = calls
    return message


@st.composite
def completions(draw):
    n = draw(st.integers(1, 3))
    choices = []
    for index in range(n):
        logprobs = draw(
            st.none()
            | st.fixed_dictionaries(
                {
                    "content": st.lists(
                        st.fixed_dictionaries(
                            {
                                "token": text,
                                "logprob": st.floats(-10, 0),
                                "top_logprobs": st.just([]),
                            }
                        ),
                        max_size=3,
                    ),
                    "refusal": st.none(),
                }
            )
        )
        choices.append(
            {
                "index": index,
                "message": draw(messages()),
                "logprobs": logprobs,
                "finish_reason": draw(st.sampled_from(["stop", "length", "tool_calls"])),
            }
        )
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "service_tier": draw(st.none() | st.just("default")),
        "system_fingerprint": draw(st.none() | st.just("fp_x")),
        "choices": choices,
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def fold(raw: bytes, chat: bool = True) -> CompletionAccumulator:
    acc = CompletionAccumulator(chat)
    for event in EventSplitter().feed(raw):
        _, data = parse_event(event)
        if data == b"[DONE]":
            acc.done = True
        else:
            acc.feed(orjson.loads(data))
    return acc


@settings(max_examples=200, deadline=None)
@given(completions())
def test_synthesized_stream_folds_back_into_the_completion(completion):
    acc = fold(synthesize(completion, include_usage=True))
    assert acc.complete
    assert acc.result() == completion


@settings(max_examples=100, deadline=None)
@given(st.lists(text, min_size=1, max_size=3), st.sampled_from(["stop", "length"]))
def test_legacy_completion_round_trip(texts, finish):
    completion = {
        "id": "cmpl-x",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "system_fingerprint": None,
        "choices": [
            {"index": i, "text": t, "logprobs": None, "finish_reason": finish}
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    acc = fold(synthesize(completion, include_usage=True), chat=False)
    assert acc.result() == completion


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=40), max_size=8),
    st.lists(st.integers(0, 400), max_size=6),
    st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n\r\n", b"\r\r"]),
)
def test_splitter_is_independent_of_chunk_boundaries(payloads, cuts, sep):
    payloads = [p.replace(b"\n", b"").replace(b"\r", b"") for p in payloads]
    stream = b"".join(b"data: " + p + sep for p in payloads)
    splitter = EventSplitter()
    events: list[bytes] = []
    start = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        events += splitter.feed(stream[start:cut])
        start = cut
    assert [parse_event(e)[1] for e in events] == payloads
    assert splitter.pending == b""


def test_a_blank_crlf_line_after_an_lf_line_ends_an_event():
    """``\n\r\n``: a line ended by LF, then a blank line ended by CRLF (what a stream of
    CRLF lines becomes when one line is rewritten with LF)."""
    splitter = EventSplitter()
    events = splitter.feed(b"data: 1\n\r\ndata: 2\r\n\r\ndata: 3\n\r")
    assert [parse_event(e)[1] for e in events] == [b"1", b"2"]
    assert splitter.feed(b"\n") == [b"data: 3\n\r\n"]
    assert list(iter_events(b"data: 1\n\r\ndata: 2")) == [b"data: 1\n\r\n", b"data: 2"]


def test_parse_event_reads_names_multiline_data_and_comments():
    assert parse_event(b'event: response.created\ndata: {"a":\ndata: 1}\n\n') == (
        "response.created",
        b'{"a":\n1}',
    )
    assert parse_event(b": keep-alive\n\n") == (None, None)
    assert parse_event(b"data:[DONE]\n\n") == (None, b"[DONE]")


def test_merge_delta_rules():
    acc: dict = {}
    merge_delta(
        acc,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}],
        },
    )
    merge_delta(
        acc,
        {
            "role": "assistant",
            "content": "Hel",
            "tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}],
        },
    )
    merge_delta(
        acc,
        {
            "content": "lo",
            "tool_calls": [{"index": 0, "id": "c1", "function": {"arguments": ": 1}"}}],
        },
    )
    assert acc == {
        "role": "assistant",
        "content": "Hello",
        "tool_calls": [
            {"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}}
        ],
    }


def test_incomplete_streams_are_not_complete():
    completion = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
    }
    raw = synthesize(completion, include_usage=False)
    assert fold(raw).complete
    assert not fold(raw.replace(b"data: [DONE]\n\n", b"")).complete
    without_finish = raw.replace(b'"finish_reason":"stop"', b'"finish_reason":null')
    assert not fold(without_finish).complete
