"""Secret detectors and redaction. Pure: no I/O.

Everything seedproxy writes (entries, cassettes, exports, drift events, logs) passes
through a :class:`Redactor` first, so a key pasted into a prompt, or echoed by a model,
never reaches a file that gets committed or shared. A secret becomes
``[REDACTED:<kind>]``, which no detector matches again, so redacting twice changes nothing
(a cassette's keys, computed again from its redacted requests, stay the same)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import orjson

# (kind, pattern). Each pattern stays inside a JSON string: none matches a quote or a
# backslash, except the PEM block, whose lines a JSON string holds as ``\n``.
BUILTIN: tuple[tuple[str, str], ...] = (
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}"),
    ("openai_key", r"\bsk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"),
    ("aws_access_key_id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    ("slack_token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    (
        "private_key",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    ),
    ("bearer_token", r"\bBearer\s+[A-Za-z0-9._~+/=-]{16,}"),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
)
CUSTOM = "custom"  # the kind a user pattern reports

# Raw JSON bytes that may hold a secret: a detector's start, or an escape (``\u0073k-``,
# ``\/``) that could spell one out of sight of the others.
_QUICK = re.compile(
    rb"sk-[A-Za-z0-9_-]{20}|(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}|github_pat_"
    rb"|xox[abprs]-|-----BEGIN [A-Z0-9 ]*PRIVATE KEY|Bearer|eyJ[A-Za-z0-9_-]{8,}\.eyJ"
    rb"|\\u[0-9a-fA-F]{4}|\\/"
)


class Found(NamedTuple):
    """One secret in a text: its kind and where it is."""

    kind: str
    start: int
    end: int


# Anything shaped like key material in an upstream's error text: the detectors above, and
# key prefixes followed by what an upstream shows of a key ("sk-proj-****9f3k").
_KEY_MATERIAL = re.compile(
    b"|".join(f"(?:{source})".encode() for _, source in BUILTIN)
    + rb"|\b(?:sk|rk|pk)-[A-Za-z0-9_*\-]{3,}"
)
MASKED = b"[REDACTED:key]"


def mask_key_material(raw: bytes, known: Sequence[str] = (), shapes: bool = True) -> bytes:
    """``raw`` (an upstream's error body) with the ``known`` secrets and, with ``shapes``,
    anything that looks like a key replaced by ``[REDACTED:key]``."""
    for secret in known:
        if secret:
            raw = raw.replace(secret.encode(), MASKED)
    return _KEY_MATERIAL.sub(MASKED, raw) if shapes else raw


def mask(secret: str) -> str:
    """Enough of a secret to find it again, not enough to use it."""
    return f"{secret[:6]}…({len(secret)} chars)"


class Redactor:
    """The detectors (``builtin``) plus the user's ``patterns``, and how to apply them to
    text, JSON values, JSON bytes and server-sent events."""

    def __init__(self, builtin: bool = True, patterns: Sequence[str] = ()) -> None:
        alternatives = [f"(?P<{kind}>{source})" for kind, source in BUILTIN] if builtin else []
        self._builtin = re.compile("|".join(alternatives)) if alternatives else None
        self._custom = tuple(re.compile(p) for p in patterns)
        self.active = builtin or bool(patterns)

    def find(self, text: str) -> Iterator[Found]:
        """Every secret in ``text``, in order; user patterns after the detectors'."""
        if self._builtin is not None:
            for m in self._builtin.finditer(text):
                yield Found(m.lastgroup or CUSTOM, m.start(), m.end())
        for pattern in self._custom:
            for m in pattern.finditer(text):
                if m.end() > m.start():
                    yield Found(CUSTOM, m.start(), m.end())

    def text(self, text: str) -> str:
        """``text`` with each secret replaced by ``[REDACTED:<kind>]``."""
        if self._builtin is not None:
            text = self._builtin.sub(lambda m: f"[REDACTED:{m.lastgroup}]", text)
        for pattern in self._custom:
            text = pattern.sub(f"[REDACTED:{CUSTOM}]", text)
        return text

    def might(self, raw: bytes) -> bool:
        """Whether raw JSON bytes can hold a secret: a regex over the bytes, so a body
        without one costs no JSON walk. User patterns may match what JSON escapes, so with
        them every body is walked."""
        return bool(self._custom) or (self._builtin is not None and bool(_QUICK.search(raw)))

    def value(self, value: Any) -> Any:
        """A JSON value with its strings (and object keys) redacted; the very same object
        when nothing was found, so callers can tell by identity."""
        if isinstance(value, str):
            out = self.text(value)
            return value if out == value else out
        if isinstance(value, list):
            items = [self.value(v) for v in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if isinstance(value, dict):
            pairs = [(self.value(k), self.value(v)) for k, v in value.items()]
            same = all(
                a is k and b is v for (a, b), (k, v) in zip(pairs, value.items(), strict=True)
            )
            return value if same else dict(pairs)
        return value

    def json_bytes(self, raw: bytes) -> bytes:
        """A JSON document's bytes redacted; the same bytes when there is nothing to redact
        (so a recording keeps the upstream's exact bytes). Bytes that are not JSON are
        redacted as text."""
        if not self.active or not raw or not self.might(raw):
            return raw
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            text = raw.decode("utf-8", "replace")
            out = self.text(text)
            return raw if out == text else out.encode()
        redacted = self.value(document)
        return raw if redacted is document else orjson.dumps(redacted)

    def sse(self, raw: bytes) -> bytes:
        """A recorded event stream with each ``data:`` line redacted as JSON."""
        if not self.active or not raw or not self.might(raw):
            return raw
        lines = raw.split(b"\n")
        for i, line in enumerate(lines):
            if line.startswith(b"data:"):
                payload = line[5:].lstrip(b" ")
                redacted = self.json_bytes(payload)
                if redacted is not payload:
                    lines[i] = b"data: " + redacted
        out = b"\n".join(lines)
        return raw if out == raw else out
