"""The other cached endpoints through the official SDK: legacy completions, embeddings and
the Responses API."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import async_sdk, sdk
from tests.harness import http
from tests.test_streaming import TOOLS, sse_payloads


def calls_to(upstream, tail: str) -> list:
    return [c for c in upstream.calls if c.path == f"/v1/{tail}"]


def drift_events(proxy) -> list[dict]:
    return orjson.loads(http(proxy.url, "GET", "/_seedproxy/drift")[2])["drift"]


# -- /v1/completions ------------------------------------------------------------------------


def test_legacy_completions_seeded_cached_and_streamed(client, upstream):
    raw = client.completions.with_raw_response.create(model="gpt-test", prompt="Once upon")
    assert raw.headers["x-cache"] == "MISS" and raw.headers["x-seedproxy-seed"] == "12345"
    assert calls_to(upstream, "completions")[0].json()["seed"] == 12345
    text = raw.parse().choices[0].text
    hit = client.completions.with_raw_response.create(model="gpt-test", prompt="Once upon")
    assert hit.headers["x-cache"] == "HIT" and hit.parse().choices[0].text == text
    chunks = list(
        client.completions.create(
            model="gpt-test",
            prompt="Once upon",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == 18
    assert len(calls_to(upstream, "completions")) == 1


def test_legacy_streamed_miss_serves_json_hits(client, upstream):
    chunks = client.completions.create(model="gpt-test", prompt="Twice", stream=True, n=2)
    streamed = "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == 0)
    hit = client.completions.with_raw_response.create(model="gpt-test", prompt="Twice", n=2)
    assert hit.headers["x-cache"] == "HIT"
    assert hit.parse().choices[0].text == streamed
    assert [c.index for c in hit.parse().choices] == [0, 1]


def test_legacy_completions_drift(make_proxy, upstream):
    proxy = make_proxy()
    with sdk(proxy) as client:
        client.completions.create(model="gpt-test", prompt="p")
        upstream.nondeterministic = True
        client.completions.create(
            model="gpt-test", prompt="p", extra_headers={"Cache-Control": "no-cache"}
        )
    [event] = drift_events(proxy)
    assert event["endpoint"] == "/v1/completions" and event["diff"]


def test_legacy_seed_validation(client, upstream):
    import openai

    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="gpt-test", prompt="p", seed="1")
    assert calls_to(upstream, "completions") == []


# -- /v1/embeddings -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["float", "base64", None])
def test_embeddings_are_cached_in_each_encoding(client, upstream, encoding):
    args = {"model": "emb-test", "input": ["hello", "world"]}
    if encoding:
        args["encoding_format"] = encoding
    first = client.embeddings.with_raw_response.create(**args)
    second = client.embeddings.with_raw_response.create(**args)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.content == first.content
    assert [d.embedding for d in second.parse().data] == [d.embedding for d in first.parse().data]
    assert len(calls_to(upstream, "embeddings")) == 1
    sent = calls_to(upstream, "embeddings")[0].json()
    assert "seed" not in sent
    assert "x-seedproxy-seed" not in second.headers
    assert "x-seedproxy-fingerprint" not in second.headers


def test_float_and_base64_give_the_same_vectors_from_separate_entries(client, upstream):
    as_float = client.embeddings.create(model="emb-test", input="x", encoding_format="float")
    as_b64 = client.embeddings.create(model="emb-test", input="x")  # the SDK asks for base64
    assert len(calls_to(upstream, "embeddings")) == 2
    assert as_b64.data[0].embedding == pytest.approx(as_float.data[0].embedding, abs=1e-6)


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embedding_drift_respects_the_tolerance(make_proxy, upstream, encoding):
    args = {"model": "emb-test", "input": "drifting", "encoding_format": encoding}
    exact = make_proxy()
    with sdk(exact) as client:
        client.embeddings.create(**args)
        upstream.nondeterministic = True
        client.embeddings.create(**args, extra_headers={"Cache-Control": "no-cache"})
    [event] = drift_events(exact)
    assert event["endpoint"] == "/v1/embeddings" and "max |delta|" in event["diff"]
    assert event["similarity"] > 0.99
    exact.stop()
    tolerant = make_proxy(cache={"embedding_tolerance": 0.01})
    with sdk(tolerant) as client:
        client.embeddings.create(**args, extra_headers={"Cache-Control": "no-cache"})
    assert len(drift_events(tolerant)) == 1  # only the event from before


# -- /v1/responses --------------------------------------------------------------------------


def post_raw(proxy, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    return http(
        proxy.url,
        "POST",
        "/v1/responses",
        body=orjson.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def test_responses_cached_without_seed(client, upstream):
    first = client.responses.with_raw_response.create(model="gpt-test", input="Say hi")
    second = client.responses.with_raw_response.create(model="gpt-test", input="Say hi")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.parse().output_text == first.parse().output_text
    assert "seed" not in calls_to(upstream, "responses")[0].json()
    assert "x-seedproxy-seed" not in second.headers
    assert len(calls_to(upstream, "responses")) == 1


def test_streamed_response_hit_replays_the_recorded_events_in_order(proxy, upstream):
    # the fields the answer echoes as the recording's: the same caller's, byte for byte
    echoed = {"user": "u-1", "metadata": {"run": "1"}, "store": True}
    body = {"model": "gpt-test", "input": "Stream me", "stream": True, **echoed}
    _, miss_headers, miss = post_raw(proxy, body)
    _, hit_headers, hit = post_raw(proxy, body)
    assert (miss_headers["X-Cache"], hit_headers["X-Cache"]) == ("MISS", "HIT")
    assert hit == miss
    types = [orjson.loads(p)["type"] for p in sse_payloads(hit)]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    assert len(calls_to(upstream, "responses")) == 1
    # and as JSON: the response that response.completed carried
    _, headers, plain = post_raw(proxy, body | {"stream": False})
    assert headers["X-Cache"] == "HIT"
    assert orjson.loads(plain) == orjson.loads(sse_payloads(miss)[-1])["response"]


@pytest.mark.parametrize("tools", [None, TOOLS])
def test_response_recorded_without_streaming_streams_to_the_sdk(client, upstream, tools):
    extra = {"tools": [{"type": "function", **t["function"]} for t in tools]} if tools else {}
    recorded = client.responses.create(model="gpt-test", input="JSON first", **extra)
    with client.responses.stream(model="gpt-test", input="JSON first", **extra) as stream:
        deltas = [
            e
            for e in stream
            if e.type in ("response.output_text.delta", "response.function_call_arguments.delta")
        ]
        final = stream.get_final_response()
    assert len(calls_to(upstream, "responses")) == 1
    assert deltas
    assert final.output_text == recorded.output_text
    assert without_parsed([o.to_dict() for o in final.output]) == [
        o.to_dict() for o in recorded.output
    ]


def without_parsed(value):
    """The SDK's stream helper adds ``parsed`` / ``parsed_arguments`` (None) to text parts and
    function calls; everything else must match."""
    if isinstance(value, dict):
        return {
            k: without_parsed(v)
            for k, v in value.items()
            if k not in ("parsed", "parsed_arguments")
        }
    if isinstance(value, list):
        return [without_parsed(v) for v in value]
    return value


async def test_async_responses_stream_hit(proxy, upstream):
    async with async_sdk(proxy) as client:
        async with client.responses.stream(model="gpt-test", input="async") as stream:
            miss = await stream.get_final_response()
        async with client.responses.stream(model="gpt-test", input="async") as stream:
            hit = await stream.get_final_response()
    assert hit.output_text == miss.output_text and hit.id == miss.id
    assert len(calls_to(upstream, "responses")) == 1


def test_background_responses_pass_through_as_sent(proxy, upstream):
    body = {"model": "gpt-test", "input": "continue", "background": True}
    for _ in range(2):
        status, headers, _ = post_raw(proxy, body)
        assert status == 200 and headers["X-Cache"] == "BYPASS"
    assert len(calls_to(upstream, "responses")) == 2
    assert calls_to(upstream, "responses")[0].json() == body


def test_incomplete_response_stream_is_not_stored(make_proxy, upstream):
    proxy = make_proxy()
    upstream.stream_fault = "no_done"
    _, _, body = post_raw(proxy, {"model": "gpt-test", "input": "cut", "stream": True})
    assert b"upstream_incomplete" in body
    upstream.stream_fault = None
    _, headers, _ = post_raw(proxy, {"model": "gpt-test", "input": "cut", "stream": True})
    assert headers["X-Cache"] == "MISS"
