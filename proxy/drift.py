"""Compare the outputs of two responses and describe the difference. Pure."""

from __future__ import annotations

import difflib
import uuid
from dataclasses import asdict, dataclass
from typing import Any


def outputs(response: dict[str, Any]) -> list[dict[str, Any]]:
    """What a completion said, per choice; ids, timestamps and usage are left out."""
    result = []
    choices = response.get("choices")
    for choice in sorted(choices if isinstance(choices, list) else [],
                         key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0):
        if not isinstance(choice, dict):
            continue
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        calls = []
        for call in message.get("tool_calls") or []:
            fn = (call.get("function") or {}) if isinstance(call, dict) else {}
            calls.append({"name": fn.get("name"), "arguments": fn.get("arguments")})
        result.append({
            "index": choice.get("index", 0),
            "content": message.get("content", choice.get("text")),
            "refusal": message.get("refusal"),
            "tool_calls": calls,
            "finish_reason": choice.get("finish_reason"),
        })
    return result


def render(outs: list[dict[str, Any]]) -> list[str]:
    """Outputs as text lines, the unit a diff is made of."""
    lines: list[str] = []
    for out in outs:
        lines.append(f"[choice {out['index']}] finish_reason={out['finish_reason']}")
        if out["content"] is not None:
            lines.extend(str(out["content"]).splitlines() or [""])
        if out["refusal"] is not None:
            lines.append(f"refusal: {out['refusal']}")
        lines.extend(f"tool_call {c['name']}({c['arguments']})" for c in out["tool_calls"])
    return lines


@dataclass(frozen=True, slots=True)
class Comparison:
    similarity: float
    diff: str


def compare(cached: dict[str, Any], live: dict[str, Any]) -> Comparison | None:
    """None when both responses said the same; else their similarity and a unified diff."""
    a, b = outputs(cached), outputs(live)
    if a == b:
        return None
    la, lb = render(a), render(b)
    ratio = difflib.SequenceMatcher(None, "\n".join(la), "\n".join(lb)).ratio()
    diff = "\n".join(difflib.unified_diff(la, lb, "cached", "live", lineterm=""))
    return Comparison(round(ratio, 4), diff)


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """A live answer that differs from the stored one for the same request."""

    id: str
    time: float
    reason: str  # refresh | fingerprint | expired | verify
    key: str
    endpoint: str
    model: str
    seed: int | None
    cached_fingerprint: str | None
    live_fingerprint: str | None
    same_fingerprint: bool
    similarity: float
    diff: str
    kind: str = "drift"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FingerprintChange:
    """A model answered live with a fingerprint never seen for it before."""

    id: str
    time: float
    model: str
    previous: str | None
    fingerprint: str | None
    kind: str = "fingerprint_change"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_id() -> str:
    return uuid.uuid4().hex[:12]
