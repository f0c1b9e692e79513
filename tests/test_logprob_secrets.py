"""No stored or replayed answer spells a secret in its logprobs (issue 28 items 2 and 9):
a secret the tokenizer cuts into 1-3 character tokens is in no token, ``bytes`` array or
alternative of the store, a JSON or streamed hit (chat and Responses) or an export, and
``seedproxy scan`` joins logprob tokens (and decodes ``bytes``) before it looks."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.kinds import KINDS, scrubbed
from proxy.logprobs import rewritten, scrub
from proxy.redact import Redactor
from tests.harness import FAKE_KEY, Serve, cli, free_port

SECRET = "AKIAIOSFODNN7EXAMPLE"
REPLY = f"Remember me: {SECRET} is the deploy key."
PLACEHOLDER = "[REDACTED:aws_access_key_id:1a5d44a2dca1]"
REDACTED = REPLY.replace(SECRET, PLACEHOLDER)
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "The key?"}]}
CHAT_LP = {**CHAT, "logprobs": True, "top_logprobs": 2}
RESP = {"model": "gpt-test", "input": "The key?", "include": ["message.output_text.logprobs"]}


def cut(text: str, sizes: tuple[int, ...]) -> list[str]:
    out, at = [], 0
    while at < len(text):
        size = sizes[len(out) % len(sizes)]
        out.append(text[at : at + size])
        at += size
    return out


def entry(token: str) -> dict[str, Any]:
    raw = list(token.encode())
    alternative = {"token": token, "logprob": -0.5, "bytes": raw}
    return {"token": token, "logprob": -0.1, "bytes": raw, "top_logprobs": [alternative]}


def spelled(entries: list[dict[str, Any]]) -> list[str]:
    """What a logprob sequence spells: its tokens, its bytes, each alternative's bytes
    (read here independently of proxy.logprobs)."""
    out = ["".join(e["token"] for e in entries)]
    out.append(bytes(b for e in entries for b in e["bytes"] or ()).decode("utf-8", "replace"))
    for e in entries:
        out += [bytes(a["bytes"] or ()).decode() for a in e.get("top_logprobs") or ()]
    return out


def clean(entries: list[dict[str, Any]]) -> None:
    """No token, bytes array or alternative spells the secret; joined, the tokens read as
    the redacted text."""
    assert entries
    texts = spelled(entries)
    assert all(SECRET not in t for t in texts), texts
    assert texts[0] == texts[1] == REDACTED


# -- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(1,), (2,), (3,), (1, 2, 3), (3, 1)])
def test_a_secret_cut_across_tokens_is_rewritten_in_a_chat_answer(sizes):
    entries = [entry(t) for t in cut(REPLY, sizes)]
    answer = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY},
                "logprobs": {"content": entries, "refusal": None},
                "finish_reason": "stop",
            }
        ],
    }
    body, _ = scrubbed(KINDS["chat"], Redactor(), orjson.dumps(answer), b"")
    assert SECRET.encode() not in body
    choice = orjson.loads(body)["choices"][0]
    assert choice["message"]["content"] == REDACTED
    clean(choice["logprobs"]["content"])
    # the tokens outside the secret are as they were, with their alternatives
    kept = [e for e in choice["logprobs"]["content"] if e["token"] and "[" not in e["token"]]
    assert all(len(e["top_logprobs"]) == 1 for e in kept)


def test_bytes_that_spell_a_secret_the_tokens_do_not_are_rewritten():
    """An upstream whose ``bytes`` disagree with its tokens: the bytes are joined too."""
    entries = [entry(t) for t in cut("say hello there, friend", (2,))]
    for e, piece in zip(entries, cut(f"x {SECRET} x", (2,)), strict=False):
        e["bytes"] = list(piece.encode())
    answer = {"output": [{"content": [{"type": "output_text", "text": "", "logprobs": entries}]}]}
    assert scrub(answer, Redactor())
    joined = bytes(b for e in entries for b in e["bytes"])
    assert SECRET.encode() not in joined and b"[REDACTED:aws_access_key_id:" in joined


def test_an_alternative_alone_that_spells_a_secret_is_rewritten():
    e = entry("ok")
    e["top_logprobs"].append({"token": "x", "logprob": -3.0, "bytes": list(SECRET.encode())})
    assert scrub({"choices": [{"logprobs": {"content": [e]}}]}, Redactor())
    assert bytes(e["top_logprobs"][1]["bytes"]).decode() == PLACEHOLDER


def test_an_escaped_field_name_does_not_hide_the_logprobs():
    entries = [entry(t) for t in cut(REPLY, (2,))]
    raw = orjson.dumps({"choices": [{"index": 0, "logprobs": {"content": entries}}]})
    raw = raw.replace(b'"logprobs"', b'"logprob\\u0073"')
    body, _ = scrubbed(KINDS["chat"], Redactor(), raw, b"")
    joined = bytes(
        b for e in orjson.loads(body)["choices"][0]["logprobs"]["content"] for b in e["bytes"]
    )
    assert SECRET.encode() not in joined


def test_legacy_completion_tokens_are_rewritten():
    tokens = cut(REPLY, (3,))
    logprobs = {"tokens": tokens, "top_logprobs": [{t: -0.1} for t in tokens]}
    assert scrub({"choices": [{"text": REPLY, "logprobs": logprobs}]}, Redactor())
    assert "".join(logprobs["tokens"]) == REDACTED
    assert all(SECRET[:3] not in k for top in logprobs["top_logprobs"] for k in top)


@settings(max_examples=200, deadline=None)
@given(
    before=st.text(alphabet="ab .,:\n", max_size=20),
    after=st.text(alphabet=" .,:\n", max_size=20),
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=6),
)
def test_rewritten_pieces_join_to_the_redacted_text(before, after, sizes):
    redactor = Redactor()
    text = f"{before} {SECRET}{after} and sk-ant-{'aB3' * 10}"
    pieces = [p.encode() for p in cut(text, tuple(sizes))]
    new = rewritten(redactor, pieces)
    joined = b"".join(new.get(i, p) for i, p in enumerate(pieces)).decode()
    assert joined == redactor.text(text)
    start, at = len(before) + 1, 0
    for i, piece in enumerate(pieces):  # every piece that held part of the secret changed
        if at < start + len(SECRET) and at + len(piece) > start:
            assert i in new and SECRET[:2] not in new[i].decode().replace(PLACEHOLDER, "")
        at += len(piece)


# -- through a real seedproxy serve ----------------------------------------------------------


def chat_stream_logprobs(client: openai.OpenAI) -> tuple[str, list[dict[str, Any]]]:
    with client.chat.completions.with_streaming_response.create(**CHAT_LP, stream=True) as raw:
        entries: list[dict[str, Any]] = []
        for chunk in raw.parse():
            for choice in chunk.choices:
                if choice.logprobs is not None and choice.logprobs.content:
                    entries += [t.model_dump() for t in choice.logprobs.content]
        return raw.headers["x-cache"], entries


def responses_stream(client: openai.OpenAI) -> tuple[str, list[dict[str, Any]]]:
    with client.responses.with_streaming_response.create(**RESP, stream=True) as raw:
        return raw.headers["x-cache"], [e.model_dump() for e in raw.parse()]


def stream_entries(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The logprobs of a Responses stream: its deltas' joined, and its done event's."""
    deltas = [e.get("logprobs") or [] for e in events if e["type"].endswith(".delta")]
    (done,) = [e for e in events if e["type"] == "response.output_text.done"]
    return [[lp for d in deltas for lp in d], done["logprobs"]]


@pytest.mark.parametrize("sizes", [(1,), (3,), (1, 2, 3)])
def test_no_hit_store_export_or_scan_spells_a_secret_cut_across_logprob_tokens(
    upstream, tmp_path, sizes
):
    upstream.reply, upstream.delta_sizes = REPLY, sizes
    cache = tmp_path / "cache"
    served = Serve(free_port(), upstream, {}, "--cache-dir", str(cache))
    try:
        base = f"http://127.0.0.1:{served.port}/v1"
        with openai.OpenAI(base_url=base, api_key=FAKE_KEY, max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(**CHAT_LP)
            assert raw.headers["x-cache"] == "MISS"  # the fetching client's own answer
            own = [t.model_dump() for t in raw.parse().choices[0].logprobs.content]
            assert max(len(e["token"]) for e in own) <= 3
            assert spelled(own)[0] == REPLY
            raw = client.chat.completions.with_raw_response.create(**CHAT_LP)
            assert raw.headers["x-cache"] == "HIT"
            hit = raw.parse().choices[0]
            assert hit.message.content == REDACTED
            clean([t.model_dump() for t in hit.logprobs.content])
            label, streamed = chat_stream_logprobs(client)  # a streamed hit
            assert label == "HIT"
            clean(streamed)

            raw = client.responses.with_raw_response.create(**RESP)
            assert raw.headers["x-cache"] == "MISS"
            label, events = responses_stream(client)  # a streamed hit, synthesized
            assert label == "HIT"
            deltas, done = stream_entries(events)
            assert all(SECRET not in t for t in spelled(deltas))
            clean(done)
            answer = client.responses.with_raw_response.create(**RESP)
            assert answer.headers["x-cache"] == "HIT"
            part = answer.parse().output[0].content[0]
            assert part.text == REDACTED
            clean([lp.model_dump() for lp in part.logprobs])
            # a streamed Responses request recorded as a stream: its kept events rebuilt
            stream_ask = {**RESP, "input": "The key, streamed?"}
            with client.responses.with_streaming_response.create(
                **stream_ask, stream=True
            ) as first:
                assert first.headers["x-cache"] == "MISS"
                assert any(e.type == "response.completed" for e in first.parse())
            with client.responses.with_streaming_response.create(
                **stream_ask, stream=True
            ) as again:
                assert again.headers["x-cache"] == "HIT"
                events = [e.model_dump() for e in again.parse()]
            deltas, done = stream_entries(events)
            assert all(SECRET not in t for t in spelled(deltas))
            clean(done)
    finally:
        served.stop()
    out = tmp_path / "cassette.json"
    result = cli("export", str(out), "--cache-dir", str(cache), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    exported = orjson.loads(out.read_bytes())
    assert len(exported["interactions"]) == 3
    for interaction in exported["interactions"]:
        body = interaction["response"]["body"]
        for choice in body.get("choices") or ():
            clean(choice["logprobs"]["content"])
        for item in body.get("output") or ():
            clean(item["content"][0]["logprobs"])
        if "events" in interaction["response"]:
            events = [e["data"] for e in interaction["response"]["events"]]
            deltas, done = stream_entries(events)
            assert all(SECRET not in t for t in spelled(deltas))
            clean(done)
    for path in (out, cache):
        result = cli("scan", str(path), cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def logprob_cassette(sizes: tuple[int, ...], where: str) -> dict[str, Any]:
    """A hand-written cassette whose text is redacted but whose logprob tokens (or only
    their ``bytes``, or a stream's delta events) still spell the secret."""
    entries = [entry(t) for t in cut(REPLY, sizes)]
    if where == "bytes":
        for e in entries:
            e["token"] = "."
    part = {"type": "output_text", "text": REDACTED, "annotations": [], "logprobs": []}
    response: dict[str, Any] = {"status": 200, "content_type": "application/json"}
    if where == "events":
        response["body"] = {
            "object": "response",
            "output": [{"type": "message", "content": [part]}],
        }
        response["events"] = [
            {
                "event": "response.output_text.delta",
                "data": {
                    "type": "response.output_text.delta",
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": "",
                    "logprobs": [e],
                },
            }
            for e in entries
        ]
        endpoint = "/v1/responses"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": REDACTED}}
        response["body"] = {"object": "chat.completion", "choices": [choice]}
        choice["logprobs"] = {"content": entries, "refusal": None}
        endpoint = "/v1/chat/completions"
    return {
        "version": 2,
        "interactions": [
            {
                "endpoint": endpoint,
                "model": "gpt-test",
                "fingerprint": "fp_one",
                "recorded_at": "2026-01-31T12:00:00.000000Z",
                "request": CHAT if endpoint.endswith("completions") else RESP,
                "response": response,
            }
        ],
    }


@pytest.mark.parametrize("where", ["tokens", "bytes", "events"])
@pytest.mark.parametrize("sizes", [(1,), (2, 3)])
def test_scan_joins_logprob_tokens_and_decodes_bytes(tmp_path, where, sizes):
    path = tmp_path / "cassette.json"
    path.write_bytes(orjson.dumps(logprob_cassette(sizes, where)))
    result = cli("scan", str(path), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "aws_access_key_id" in result.stdout
    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_bytes(orjson.dumps(logprob_cassette(sizes, where)["interactions"][0]) + b"\n")
    assert cli("scan", str(jsonl), cwd=tmp_path).returncode == 1


@pytest.mark.parametrize("where", ["tokens", "bytes", "events"])
def test_an_imported_cassette_whose_logprobs_spell_a_secret_is_stored_rewritten(tmp_path, where):
    path = tmp_path / "cassette.json"
    path.write_bytes(orjson.dumps(logprob_cassette((1, 2, 3), where)))
    cache = tmp_path / "cache"
    result = cli("import", str(path), "--cache-dir", str(cache), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    result = cli("scan", str(cache), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out.json"
    assert cli("export", str(out), "--cache-dir", str(cache), cwd=tmp_path).returncode == 0
    (interaction,) = orjson.loads(out.read_bytes())["interactions"]
    response = interaction["response"]
    if where == "events":  # rebuilt from the answer: no delta spells it
        assert SECRET not in orjson.dumps(response["events"]).decode()
        assert all(
            SECRET not in t
            for t in spelled(stream_entries([e["data"] for e in response["events"]])[0])
        )
    else:
        entries = response["body"]["choices"][0]["logprobs"]["content"]
        assert all(SECRET not in t for t in spelled(entries))
