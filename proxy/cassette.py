"""Cassettes: stored entries as JSON Lines, to commit recordings and replay them in CI.

One line per entry: key, endpoint, model, fingerprint, time, status, seed, token usage, the
request body and the response (as JSON), and for Responses streams the recorded events.
Entries never hold request headers, so no credential can reach a cassette."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from .store import Entry


class CassetteError(ValueError):
    """A line that is not a cassette entry; the message says which line and why."""


def to_line(entry: Entry) -> bytes:
    record: dict[str, Any] = {
        "key": entry.key,
        "endpoint": entry.endpoint,
        "model": entry.model,
        "fingerprint": entry.fingerprint,
        "created": entry.created,
        "status": entry.status,
        "content_type": entry.content_type,
        "seed": entry.seed,
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        "request": orjson.Fragment(entry.request) if entry.request else None,
        "response": orjson.Fragment(entry.body),
    }
    if entry.stream:
        record["events"] = base64.b64encode(entry.stream).decode()
    return orjson.dumps(record) + b"\n"


def from_line(line: bytes, number: int = 0) -> Entry:
    try:
        r = orjson.loads(line)
        return Entry(
            key=str(r["key"]),
            fingerprint=r["fingerprint"],
            created=float(r["created"]),
            status=int(r["status"]),
            content_type=str(r["content_type"]),
            endpoint=str(r["endpoint"]),
            model=str(r["model"]),
            seed=r.get("seed"),
            prompt_tokens=int(r.get("prompt_tokens") or 0),
            completion_tokens=int(r.get("completion_tokens") or 0),
            body=orjson.dumps(r["response"]),
            request=orjson.dumps(r["request"]) if r.get("request") is not None else b"",
            stream=base64.b64decode(r["events"]) if r.get("events") else b"",
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CassetteError(f"line {number}: not a cassette entry ({exc})") from None
