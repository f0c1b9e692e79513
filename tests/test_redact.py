"""Redaction before any write, and `seedproxy scan`."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys

import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.redact import Redactor
from proxy.sse import iter_events, parse_event
from tests.conftest import sdk
from tests.harness import chat_completion, http
from tests.upstream import Scripted

OPENAI = "sk-proj-" + "Ab3d" * 12
SECRETS = {
    "openai_key": OPENAI,
    "anthropic_key": "sk-ant-api03-" + "x9Y8" * 8,
    "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_" + "a1" * 18,
    "slack_token": "xoxb-1234567890-abcdefghij",
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
    "bearer_token": "Bearer abcdefghijklmnopq0123456789",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
}


@pytest.fixture
def backend() -> str:
    return "disk"


def placeholder(kind: str, secret: str) -> str:
    return f"[REDACTED:{kind}:{hashlib.sha256(secret.encode()).hexdigest()[:12]}]"


@pytest.mark.parametrize(("kind", "secret"), SECRETS.items())
def test_each_detector_redacts_its_kind(kind, secret):
    redactor = Redactor()
    value = secret.removeprefix("Bearer ")  # the scheme is context, not the secret
    shown = placeholder(kind, value)
    assert redactor.text(f"use {secret} now") == f"use {secret[: -len(value)]}{shown} now"
    assert redactor.might(orjson.dumps({"content": f"use {secret}"}))
    assert Redactor(builtin=False).text(secret) == secret


def test_plain_text_is_left_alone_and_costs_no_walk():
    redactor = Redactor()
    for text in ("sk-short", "Ask-me-anything about AKIA", "a desk-lamp", "xox"):
        assert redactor.text(text) == text
    raw = orjson.dumps({"messages": [{"content": "Say hello\nto sk-mo"}]})
    assert not redactor.might(raw)
    assert redactor.json_bytes(raw) is raw


def test_escaped_secrets_are_found_and_redaction_is_idempotent():
    raw = b'{"content":"\\u0073k-proj-' + b"Ab3d" * 12 + b'"}'
    once = Redactor().json_bytes(raw)
    assert orjson.loads(once) == {"content": placeholder("openai_key", OPENAI)}
    assert Redactor().json_bytes(once) is once


def test_user_patterns():
    redactor = Redactor(builtin=False, patterns=[r"ACME-\d{6}"])
    shown = placeholder("custom", "ACME-123456")
    assert redactor.text("id ACME-123456") == f"id {shown}"
    event = b'data: {"t":"ACME-123456"}\n\n'
    assert redactor.sse(event) == b'data: {"t":"' + shown.encode() + b'"}\n\n'


def test_a_redacted_stream_keeps_its_line_ends():
    """A data line rewritten keeps its CRLF (or CR), so the stream still splits into the
    same events."""
    redactor = Redactor(builtin=False, patterns=[r"ACME-\d{6}"])
    shown = placeholder("custom", "ACME-123456").encode()
    for end in (b"\r\n", b"\r", b"\n"):
        stream = b'data:{"t":"ACME-123456"}' + end + end + b"data: [DONE]" + end + end
        out = redactor.sse(stream)
        assert out == b'data: {"t":"' + shown + b'"}' + end + end + b"data: [DONE]" + end + end
        assert [parse_event(e)[1] for e in iter_events(out)] == [
            b'{"t":"' + shown + b'"}',
            b"[DONE]",
        ]


def _files(directory) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


def test_secrets_never_reach_the_cache_but_reach_the_upstream_and_the_client(
    make_proxy, upstream, cache_dir, logs
):
    proxy = make_proxy()
    answer = f"your key is {SECRETS['aws_access_key_id']}"
    upstream.script(Scripted(200, chat_completion(answer, model="gpt-4o-mini")))
    prompt = f"my key is {OPENAI}"
    with sdk(proxy) as client:
        live = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
        hit = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
    assert live.choices[0].message.content == answer  # as the upstream sent it
    assert hit.headers["x-cache"] == "HIT"  # the same request is still a hit, redacted
    shown = placeholder("aws_access_key_id", SECRETS["aws_access_key_id"])
    assert hit.parse().choices[0].message.content == f"your key is {shown}"
    assert OPENAI in upstream.chat_calls[0].body.decode()
    proxy.stop()
    stored = _files(cache_dir)
    assert placeholder("openai_key", OPENAI).encode() in stored
    for secret in (OPENAI, SECRETS["aws_access_key_id"]):
        assert secret.encode() not in stored
        assert secret not in logs.text


def test_drift_events_show_no_secret(make_proxy, upstream, cache_dir):
    proxy = make_proxy(cache={"mode": "refresh"})
    upstream.script(
        Scripted(200, chat_completion(f"one {SECRETS['github_token']}", model="gpt-4o-mini")),
        Scripted(200, chat_completion(f"two {SECRETS['github_token']}", model="gpt-4o-mini")),
    )
    with sdk(proxy) as client:
        for _ in range(2):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
    _, _, raw = http(proxy.url, "GET", "/_seedproxy/drift")
    _, _, page = http(proxy.url, "GET", "/_seedproxy/")
    assert placeholder("github_token", SECRETS["github_token"]).encode() in raw
    assert SECRETS["github_token"].encode() not in raw + page


def test_builtin_false_turns_the_detectors_off(make_proxy, upstream, cache_dir):
    proxy = make_proxy(redact={"builtin": False})
    with sdk(proxy) as client:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": OPENAI}]
        )
    proxy.stop()
    assert OPENAI.encode() in _files(cache_dir)


def test_property_a_redacted_secret_is_in_no_file(make_proxy, upstream, cache_dir):
    proxy = make_proxy()
    unique = itertools.count()

    @settings(max_examples=25, deadline=None)
    @given(
        secret=st.sampled_from(list(SECRETS.values())),
        before=st.text(st.characters(codec="utf-8"), max_size=20),
        escape=st.booleans(),
    )
    def check(secret, before, escape):
        upstream.calls.clear()
        content = f"{next(unique)} {before} {secret}"  # each a miss
        message = {"role": "user", "content": content}
        body = orjson.dumps({"model": "m", "seed": 1, "messages": [message]})
        if escape:  # a client's JSON may spell a character as \\uXXXX
            body = body.replace(b"k-", b"\\u006b-").replace(b"IA", b"I\\u0041")
        status, _, _ = http(proxy.url, "POST", "/v1/chat/completions", body)
        assert status == 200
        assert [c.body for c in upstream.calls] == [body]  # what the client sent
        stored = _files(cache_dir)
        assert secret.encode() not in stored
        assert orjson.dumps(secret)[1:-1] not in stored

    check()


def test_scan_lists_secrets_and_exits_1(tmp_path):
    cassette = {
        "version": 2,
        "interactions": [
            {"request": {"messages": [{"content": "fine"}]}},
            {"request": {"messages": [{"content": f"k {OPENAI}"}]}},
        ],
    }
    (tmp_path / "dirty.json").write_bytes(orjson.dumps(cassette))
    (tmp_path / "clean.json").write_bytes(b'{"version": 2, "interactions": []}')
    (tmp_path / "old.jsonl").write_bytes(
        b'{"request": {"x": "' + SECRETS["jwt"].encode() + b'"}}\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "scan", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"{tmp_path / 'dirty.json'}: interaction 2: openai_key: sk-pro…" in result.stdout
    assert f"{tmp_path / 'old.jsonl'}: line 1: jwt: " in result.stdout
    assert OPENAI not in result.stdout and "2 secrets found" in result.stderr
    clean = subprocess.run(
        [sys.executable, "-m", "proxy", "scan", str(tmp_path / "clean.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert clean.returncode == 0, clean.stderr


def test_scan_reads_a_cache_directory(make_proxy, cache_dir, tmp_path):
    proxy = make_proxy(redact={"builtin": False})  # so something is left to find
    with sdk(proxy) as client:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": OPENAI}]
        )
    proxy.stop()
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "scan", "--json", str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    found = orjson.loads(result.stdout)
    assert [(f["kind"], f["entry"].split()[0]) for f in found] == [("openai_key", "entry")]


def test_a_cassette_with_a_secret_is_redacted_on_load():
    from proxy import cassette
    from proxy.config import load_settings

    settings = load_settings(None, {})
    request = {"model": "m", "messages": [{"role": "user", "content": OPENAI}]}
    record = {
        "endpoint": "/v1/chat/completions",
        "model": "m",
        "fingerprint": "fp",
        "recorded_at": "2026-01-31T12:00:00.000000Z",
        "request": request,
        "response": {"status": 200, "content_type": "application/json", "body": {"x": OPENAI}},
    }
    data = orjson.dumps({"version": 2, "interactions": [record]})
    (loaded,) = cassette.loads(data, settings)
    assert OPENAI.encode() not in loaded.entry.request + loaded.entry.body
    assert loaded.entry.key == cassette.key_for("/v1/chat/completions", request, "", "", settings)


def test_requests_that_differ_in_a_secret_never_share_an_answer(upstream, tmp_path):
    """Through a real `seedproxy serve` and the SDK: two users' tokens in "Decode this
    token", prompts after a PEM header with no END line, look-alikes that differ: each its
    own answer; the same secret again: a hit."""
    from tests.harness import FAKE_KEY, Serve, free_port
    from tests.secrets_corpus import FAKES

    jwt = FAKES[-1][2]
    other = jwt[:-4] + "AbCd"
    head = "-----BEGIN PRIVATE KEY----- Now, unrelated: "
    pairs = [
        (f"Decode this token: {jwt}", f"Decode this token: {other}"),
        (head + "what is the capital of France?", head + "what is 2+2?"),
        ("Is sk-learn-compatible-estimator fine?", "Is sk-learn-compatible-transform fine?"),
        ("Use Bearer token-based-authentication", "Use Bearer token-based-authorization"),
    ]
    served = Serve(free_port(), upstream, {}, "--cache-dir", str(tmp_path / "cache"))
    try:
        base = f"http://127.0.0.1:{served.port}/v1"
        with openai.OpenAI(base_url=base, api_key=FAKE_KEY) as client:

            def ask(prompt: str) -> tuple[str, str, str]:
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
                )
                answer = raw.parse().choices[0].message.content or ""
                return raw.headers["X-Cache"], raw.headers["X-Seedproxy-Key"], answer

            for a, b in pairs:
                first, second = ask(a), ask(b)
                assert (first[0], second[0]) == ("MISS", "MISS")
                assert first[1] != second[1] and first[2] != second[2]
                again = ask(a)
                assert again[0] == "HIT" and again[1:] == first[1:]
    finally:
        served.stop()
    assert jwt.encode() not in b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
