"""`seedproxy scan`: streamed deltas joined again before the search (our cassettes' event
lists, chat and Responses; vcrpy's raw SSE bodies), vcrpy YAML cassettes read also from a
directory, and every skipped file listed with why."""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.redact import Redactor
from proxy.scan import Scanner, _record, _texts
from tests.secrets_corpus import FAKES

AWS = "AKIAIOSFODNN7EXAMPLE"
SPOKEN = f"Sure, remember me: {AWS} is your key."
# The split the issue showed: no piece holds the key, yet the stream spells it.
ISSUE_SPLIT = ["Sure, rememb", "er me: AK", "IAIOSFODN", "N7EXAMPLE", " is your key."]


def split(text: str, seed: int) -> list[str]:
    """``text`` in pieces of 1 to 3 characters."""
    rng, out, at = random.Random(seed), [], 0
    while at < len(text):
        step = rng.randint(1, 3)
        out.append(text[at : at + step])
        at += step
    return out


def responses_events(pieces: list[str]) -> list[dict]:
    """A Responses stream as our cassettes keep it: one event per delta."""
    events = [{"event": "response.created", "data": {"type": "response.created"}}]
    for piece in pieces:
        data = {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": piece,
        }
        events.append({"event": data["type"], "data": data})
    events.append({"event": "response.completed", "data": {"type": "response.completed"}})
    return events


def chat_sse(pieces: list[str]) -> str:
    """A chat completion stream as an upstream sends it (vcrpy records it raw): content
    deltas, and a tool call's arguments in pieces too."""
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    chunks += [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    call = {"index": 0, "id": "call_1", "function": {"name": "save", "arguments": ""}}
    chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    for p in split('{"key": "ghp_' + "FaKe" + "0aB1" * 8 + '"}', 7):
        delta = {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}
        chunks.append({"choices": [{"index": 0, "delta": delta}]})
    return "".join(f"data: {orjson.dumps(c).decode()}\n\n" for c in chunks) + "data: [DONE]\n\n"


def scan(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "scan", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def interaction(response: dict) -> dict:
    return {
        "endpoint": "/v1/responses",
        "model": "gpt-4o-mini",
        "fingerprint": None,
        "recorded_at": "2026-01-31T12:00:00.000000Z",
        "request": {"model": "gpt-4o-mini", "input": "remember my key", "stream": True},
        "response": {"status": 200, "content_type": "text/event-stream", **response},
    }


def test_a_key_split_across_responses_deltas_is_found_in_our_cassette(tmp_path):
    events = responses_events(ISSUE_SPLIT)
    cassette = {"version": 2, "interactions": [interaction({"body": {}, "events": events})]}
    path = tmp_path / "cassettes" / "test_x.json"
    path.parent.mkdir()
    path.write_bytes(orjson.dumps(cassette))
    result = scan(tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"{path}: interaction 1: aws_access_key_id: AKIAIO…(20 chars)" in result.stdout
    assert AWS not in result.stdout + result.stderr


def test_a_key_split_in_a_json_lines_cassette_and_an_export_is_found(tmp_path):
    line = interaction({"body": {}, "events": responses_events(split(SPOKEN, 1))})
    (tmp_path / "c.jsonl").write_bytes(orjson.dumps(line) + b"\n")
    result = scan(tmp_path / "c.jsonl")
    assert result.returncode == 1 and ": line 1: aws_access_key_id:" in result.stdout


@settings(max_examples=60, deadline=None)
@given(fake=st.sampled_from(FAKES), seed=st.integers(0, 10**6), chat=st.booleans())
def test_any_secret_in_1_to_3_character_deltas_is_found(fake, seed, chat):
    kind, text, _ = fake
    pieces = split(text, seed)
    if chat:  # raw, as a cache entry or vcrpy keeps it
        texts = _texts(chat_sse(pieces).encode())
    else:  # an event list, as our cassettes keep it
        texts = _record(interaction({"body": {}, "events": responses_events(pieces)}))
    assert kind in {f.kind for f in Scanner(Redactor())._in("x", "entry", texts)}


def vcr_cassette(tmp_path: Path) -> Path:
    """A vcrpy cassette as pytest-recording writes it: a streamed chat answer kept raw, a
    gzipped JSON answer kept as !!binary, the credential in a header and the URI."""
    secret_body = gzip.compress(
        orjson.dumps({"data": [{"id": "hf_" + "FAKEaBcDeFgHiJkLmNoPqRsTuVwXyZaBcD"}]})
    )
    document = {
        "version": 1,
        "interactions": [
            {
                "request": {
                    "body": '{"messages": [{"role": "user", "content": "hi"}], "stream": true}',
                    "headers": {"authorization": ["Bearer FAKEtok3n.abc123_def456"]},
                    "method": "POST",
                    "uri": "https://api.openai.com/v1/chat/completions",
                },
                "response": {
                    "body": {"string": chat_sse(ISSUE_SPLIT)},
                    "headers": {"content-type": ["text/event-stream"]},
                    "status": {"code": 200, "message": "OK"},
                },
            },
            {
                "request": {
                    "body": None,
                    "headers": {},
                    "method": "GET",
                    "uri": "https://generativelanguage.example/v1/models?key=AIza"
                    + "SyFAKE0aB1cD2eF3gH4iJ5kL6mN7oP8qR9s",
                },
                "response": {
                    "body": {"string": secret_body},
                    "headers": {"content-encoding": ["gzip"]},
                    "status": {"code": 200, "message": "OK"},
                },
            },
        ],
    }
    path = tmp_path / "cassettes" / "test_chat.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_vcrpy_cassette_in_a_directory_is_read_bodies_headers_and_streams(tmp_path):
    path = vcr_cassette(tmp_path)
    (tmp_path / "notes.txt").write_text(f"not scanned: {AWS}")
    (tmp_path / ".git").mkdir()
    (tmp_path / "broken.yml").write_text("interactions: [unclosed\n")
    result = scan(tmp_path)
    assert result.returncode == 1, result.stderr
    found = {line.split(": ")[2] for line in result.stdout.splitlines()}
    assert found == {
        "aws_access_key_id",  # split across chat content deltas
        "github_token",  # split across a tool call's argument deltas
        "bearer_token",  # the recorded Authorization header
        "google_api_key",  # in the URI's query
        "huggingface_token",  # in a gzipped !!binary body
    }
    assert all(line.startswith(f"{path}: interaction ") for line in result.stdout.splitlines())
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert skipped == [
        f"skipped {tmp_path / '.git'}: version control data",
        f"skipped {tmp_path / 'broken.yml'}: not YAML that a safe loader reads: "
        + skipped[1].split("reads: ", 1)[1],
        f"skipped {tmp_path / 'notes.txt'}: not a cassette, export or cache (.txt)",
    ]
    assert "5 secrets found" in result.stderr


def test_a_clean_vcrpy_cassette_passes(tmp_path):
    document = {"version": 1, "interactions": [{"request": {"uri": "https://x/v1/models"}}]}
    (tmp_path / "clean.yaml").write_text(yaml.safe_dump(document))
    result = scan(tmp_path)
    assert result.returncode == 0 and "0 secrets found" in result.stderr


@pytest.mark.parametrize("pieces", [ISSUE_SPLIT, ["Sure, remember me: ", AWS]])
def test_each_secret_is_reported_once(pieces):
    record = interaction({"body": {}, "events": responses_events(pieces)})
    found = list(Scanner(Redactor())._in("x", "interaction 1", _record(record)))
    assert [f.kind for f in found] == ["aws_access_key_id"]


def test_a_secret_access_key_in_a_json_field_is_found(tmp_path):
    body = {"Credentials": {"SecretAccessKey": "FAKEfake0123456789+/abcdefghijABCDEFGHIJ"}}
    cassette = {"version": 2, "interactions": [interaction({"body": body})]}
    (tmp_path / "c.json").write_bytes(orjson.dumps(cassette))
    result = scan(tmp_path / "c.json")
    assert result.returncode == 1 and ": interaction 1: aws_secret_access_key: " in result.stdout
