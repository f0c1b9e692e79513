"""Secret detectors and redaction. Pure: no I/O.

Everything seedproxy writes (entries, cassettes, exports, drift events, logs) passes
through a :class:`Redactor` first, so a key pasted into a prompt, or echoed by a model,
never reaches a file that gets committed or shared. A secret becomes
``[REDACTED:<kind>:<digest>]``, the digest being the first 12 hex characters of the
SHA-256 of the secret: two requests that differ only in a secret keep two cache keys, and
the same secret gives the same placeholder on any machine (cassettes stay portable). No
detector matches a placeholder, so redacting twice changes nothing (a cassette's keys,
computed again from its redacted requests, stay the same).

All matching is on RE2 (:mod:`proxy.patterns`): linear in the text, whatever it holds."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import orjson

from .patterns import Pattern, compile_bytes, compile_str
from .sse import data_value

Check = Callable[[bytes], bool]


def _has(chars: str) -> Check:
    table = chars.encode()
    return lambda value: len(value.translate(None, table)) < len(value)


def _all(*checks: Check) -> Check:
    return lambda value: all(check(value) for check in checks)


_DIGIT, _UPPER, _LOWER = (
    _has(string.digits),
    _has(string.ascii_uppercase),
    _has(string.ascii_lowercase),
)
_RANDOM = _all(_DIGIT, _UPPER, _LOWER)  # what a generated key shows and prose does not


def _two(value: bytes) -> bool:
    """At least two of digits, capitals and small letters: any generated token, but not
    "token-based-authentication" or "xxxxxxxx"."""
    return _DIGIT(value) + _UPPER(value) + _LOWER(value) >= 2


def _varied(least: int) -> Check:
    """At least ``least`` different characters: not a run of ``X`` in documentation."""
    return lambda value: len(set(value)) >= least


def _after(prefix: int, check: Check) -> Check:
    """``check`` on what follows the detector's fixed start (``hf_``, ``AIzaSy``)."""
    return lambda value: check(value[prefix:])


def _openai(value: bytes) -> bool:
    return not value.startswith(b"sk-ant-") and _RANDOM(value)  # sk-ant- is Anthropic's


def _any(value: bytes) -> bool:
    return True


class Detector(NamedTuple):
    """One kind of secret. ``pattern`` (RE2) finds it; a capture group in it, if there is
    one, is the secret and the rest only context (``Bearer``, ``aws_secret_access_key =``),
    which stays readable. ``check`` refuses look-alikes by what the secret must contain
    (generated keys mix digits and cases; "sk-learn-compatible" does not). It must refuse
    every part of a refused match too (a "contains ..." test does), because the search goes
    on after it. ``quick`` is what raw JSON holding such a secret always contains: the
    cheap test that spares a clean body the walk."""

    kind: str
    pattern: str
    quick: str
    check: Check = _any


_PEM_LABEL = r"[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?"
_PEM_GAP = r"(?:\r?\n|\\r\\n|\\n|[ \t])+"  # line breaks, also as escaped in raw JSON
# The header, then only what a key block holds (header fields, base64 lines, its END
# line): a header without a block after it is redacted alone, never the prompt after it.
_PEM = (
    rf"-----BEGIN {_PEM_LABEL}-----"
    rf"(?:{_PEM_GAP}(?:Proc-Type|DEK-Info|Comment|Version): [^\r\n\\\x00]*)*"
    rf"(?:{_PEM_GAP}[A-Za-z0-9+/=]{{16,}})*"
    rf"(?:(?:{_PEM_GAP}[A-Za-z0-9+/=]{{1,15}})?{_PEM_GAP}-----END {_PEM_LABEL}-----)?"
)

AWS_SECRET = "aws_secret_access_key"
BUILTIN: tuple[Detector, ...] = (
    Detector("anthropic_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}", r"sk-ant-", _RANDOM),
    Detector(
        "openai_key",
        r"\bsk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_-]{20,}",
        r"sk-[A-Za-z0-9_-]{20}",
        _openai,
    ),
    Detector(
        "aws_access_key_id",
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        r"AKIA|ASIA",
        _after(4, _varied(6)),
    ),
    Detector(
        AWS_SECRET,
        r"(?i:(?:aws_?)?secret_?access_?key)[\"']?[ \t]*[:=][ \t]*[\"']?"
        r"([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|\z)",
        r"(?i:secret_?access_?key)",
        _two,
    ),
    Detector(
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
        r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_",
        _after(4, _two),
    ),
    Detector("gitlab_token", r"\bglpat-[A-Za-z0-9_-]{20,}", r"glpat-", _after(6, _two)),
    Detector(  # exactly 35 after AIza: a longer run is something else
        "google_api_key",
        r"\b(AIza[A-Za-z0-9_-]{35})(?:[^A-Za-z0-9_-]|\z)",
        r"AIza",
        _after(6, _two),
    ),
    Detector(
        "stripe_key",
        r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
        r"k_(?:live|test)_",
        _after(8, _two),
    ),
    Detector("huggingface_token", r"\bhf_[A-Za-z0-9]{30,}", r"hf_[A-Za-z0-9]{30}", _after(3, _two)),
    Detector("slack_token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}", r"xox[abprs]-", _after(5, _two)),
    Detector("private_key", _PEM, r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY"),
    Detector(
        "bearer_token",
        r"\bBearer[ \t]+([A-Za-z0-9._~+/=-]{15,}[A-Za-z0-9_~+/=-])",  # not a full stop after
        r"Bearer",
        _two,
    ),
    Detector(
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        r"eyJ[A-Za-z0-9_-]{8,}\.eyJ",
    ),
)

# The detectors as they were before placeholders carried a digest, each replacing its
# whole match (context included) with ``[REDACTED:<kind>]``: ``Redactor(legacy=True)``
# reproduces what cassettes and stores written then hold, so their keys can be found.
LEGACY: tuple[Detector, ...] = (
    Detector("anthropic_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}", ""),
    Detector(
        "openai_key",
        r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
        "",
        lambda value: not value.startswith(b"sk-ant-"),
    ),
    Detector("aws_access_key_id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", ""),
    Detector("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})", ""),
    Detector("slack_token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}", ""),
    Detector(
        "private_key",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?"
        r"(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
        "",
    ),
    Detector("bearer_token", r"\bBearer\s+[A-Za-z0-9._~+/=-]{16,}", ""),
    Detector("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", ""),
)
CUSTOM = "custom"  # the kind a user pattern reports

# A placeholder, this form or the legacy one: never matched again, by anything.
_PLACEHOLDER = r"\[REDACTED:[a-z0-9_]+(?::[0-9a-f]{12})?\]"

# A client's literal placeholder-shaped text becomes a placeholder of this kind, carrying a
# digest of the literal: see Redactor.text(live=True).
LITERAL = "placeholder"
_LITERAL = compile_bytes(_PLACEHOLDER.encode())
_LITERAL_START = "[REDACTED:"

# Raw JSON bytes that may hold a secret: a detector's start, or an escape (``\u0073k-``,
# ``\/``) that could spell one out of sight of the others.
_QUICK = compile_bytes(
    "|".join([*(d.quick for d in BUILTIN), r"\\u[0-9a-fA-F]{4}", r"\\/"]).encode()
)

# Redacting costs up to ~1 µs a byte (a body made of key-shaped runs): a larger body is
# parsed and redacted in a worker thread, so the loop never waits more than ~50 ms on one.
ON_LOOP = 64 * 1024
_PASSES = 3  # passes over a redacted text at most (one changes nothing nearly always)

Span = tuple[str | None, int, int]  # (kind, start, end) in UTF-8 bytes; None: a placeholder


class _Detectors:
    """Detectors compiled into one RE2 alternation, after the placeholder (so one pass
    over a text finds them all and steps over what is already redacted)."""

    def __init__(self, detectors: Sequence[Detector]) -> None:
        parts = [f"({_PLACEHOLDER})"]
        table: dict[int, tuple[int, Detector]] = {}  # outer group: (secret's group, detector)
        group = 2
        for detector in detectors:
            inner = compile_bytes(detector.pattern.encode()).groups
            if inner > 1:
                raise ValueError(f"{detector.kind}: at most one capture group")
            parts.append(f"({detector.pattern})")
            table[group] = (group + inner, detector)
            group += 1 + inner
        self._regex = compile_bytes("|".join(parts).encode())
        self._table = table
        # the detectors alone: "no match" is one scan, not a step per placeholder
        bare = "|".join(f"(?:{d.pattern})" for d in detectors) or r"[^\x00-\x{10FFFF}]"
        self._bare = compile_bytes(bare.encode())

    def none(self, data: bytes) -> bool:
        """Whether no detector matches anywhere in ``data`` (checks aside)."""
        return self._bare.search(data) is None

    def spans(self, data: bytes, checked: bool = True) -> list[Span]:
        """Placeholders and secrets in ``data``, in order (without ``checked``, shapes
        that a detector's check would refuse count too)."""
        out: list[Span] = []
        matches = self._regex.finditer(data)
        while (m := next(matches, None)) is not None:
            # the matching alternative: its group ends last (an inner one ends with it at
            # most, and the first of equal ends is the outer one)
            index = m.lastindex or 1
            if index == 1:
                out.append((None, *m.span()))
                continue
            group, detector = self._table[index]
            start, end = m.span(group)
            if not checked or detector.check(data[start:end]):
                out.append((detector.kind, start, end))
                if end < m.end():  # what follows a secret may start the next one
                    matches = self._regex.finditer(data, end)
        return out


def disarmed(text: str) -> str:
    """``text`` with each placeholder-shaped literal (either form) replaced by
    ``[REDACTED:placeholder:<digest of the literal>]``: in one pass over the text as it
    came, never over its own output, so it ends."""
    if _LITERAL_START not in text:  # at C speed: nearly every string stops here
        return text
    data = text.encode("utf-8", "surrogatepass")
    out = _LITERAL.sub(lambda m: _placeholder(LITERAL, m.group(0) or b"", False), data)
    return out.decode("utf-8", "surrogatepass")


def _placeholder(kind: str, value: bytes, legacy: bool) -> bytes:
    if legacy:
        return f"[REDACTED:{kind}]".encode()
    return f"[REDACTED:{kind}:{hashlib.sha256(value).hexdigest()[:12]}]".encode()


def _custom_spans(pattern: Pattern[bytes], data: bytes, taken: list[Span]) -> list[Span]:
    """Where ``pattern`` matches between the ``taken`` spans (placeholders and secrets
    found before): a user's pattern never cuts into a placeholder."""
    out: list[Span] = []
    start = 0
    for gap_end, next_start in [*((s, e) for _, s, e in taken), (len(data), len(data))]:
        pos = start
        while pos < gap_end and (m := pattern.search(data, pos, gap_end)) is not None:
            if m.end() > m.start():
                out.append((CUSTOM, m.start(), m.end()))
                pos = m.end()
            else:  # an empty match: step over one character
                pos = m.end() + 1
                while pos < gap_end and data[pos] & 0xC0 == 0x80:
                    pos += 1
        start = next_start
    return out


class Found(NamedTuple):
    """One secret in a text: its kind and the secret itself."""

    kind: str
    value: str


_MATERIAL = _Detectors(
    (*BUILTIN, Detector("key", r"\b(?:sk|rk|pk)-[A-Za-z0-9_*\-]{3,}", ""))
)  # also key prefixes followed by what an upstream shows of a key ("sk-proj-****9f3k")
MASKED = b"[REDACTED:key]"


def mask_key_material(raw: bytes, known: Sequence[str] = (), shapes: bool = True) -> bytes:
    """``raw`` (an upstream's error body) with the ``known`` secrets and, with ``shapes``,
    anything that looks like a key replaced by ``[REDACTED:key]``."""
    for secret in known:
        if secret:
            raw = raw.replace(secret.encode(), MASKED)
    if not shapes:
        return raw
    spans = [s for s in _MATERIAL.spans(raw, checked=False) if s[0] is not None]
    return _replace(raw, spans, lambda kind, value: MASKED) if spans else raw


def _replace(data: bytes, spans: Sequence[Span], make: Callable[[str, bytes], bytes]) -> bytes:
    parts: list[bytes] = []
    last = 0
    for kind, start, end in spans:
        if kind is not None:
            parts += (data[last:start], make(kind, data[start:end]))
            last = end
    parts.append(data[last:])
    return b"".join(parts)


def placeholder(kind: str, value: str) -> str:
    """What replaces the secret ``value`` of ``kind`` (outside a detector's own match:
    a credential in a query string)."""
    return _placeholder(kind, value.encode("utf-8", "surrogatepass"), False).decode()


_ONE_PLACEHOLDER = compile_str(rf"\A{_PLACEHOLDER}\z")


def is_placeholder(text: str) -> bool:
    """Whether ``text`` is one placeholder (either form) and nothing else."""
    return _ONE_PLACEHOLDER.search(text) is not None


def mask(secret: str) -> str:
    """Enough of a secret to find it again, not enough to use it."""
    return f"{secret[:6]}…({len(secret)} chars)"


class Redactor:
    """The detectors (``builtin``) plus the user's ``patterns`` (RE2 syntax; ValueError
    naming the reason when one does not compile), and how to apply them to text, JSON
    values, JSON bytes and server-sent events.

    Input is *live* (``live=True``: a client's request as it arrives, and what is recorded
    of it) or *stored* (a cassette, an import, a recorded request compared with another).
    Live text that already looks like a placeholder would otherwise share a key with the
    secret it names (anyone can copy a digest from an export or a drift event): it is
    first made a placeholder of its own, ``[REDACTED:placeholder:<digest of the literal>]``.
    Stored text keeps its placeholders, so the key of a recorded request computed again
    on load is the key its live request had.

    ``legacy=True`` gives what seedproxy wrote before placeholders carried a digest: the
    old detectors, each whole match replaced by ``[REDACTED:<kind>]``. Nothing is stored
    that way any more; it exists so that a key can also be computed the old way, to find
    entries and cassettes recorded then (see :meth:`legacy_form`)."""

    def __init__(
        self, builtin: bool = True, patterns: Sequence[str] = (), legacy: bool = False
    ) -> None:
        self.builtin, self.patterns, self.legacy = builtin, tuple(patterns), legacy
        self._detectors = _Detectors((LEGACY if legacy else BUILTIN) if builtin else ())
        self._custom = tuple(compile_bytes(p.encode()) for p in self.patterns)
        self.active = builtin or bool(self.patterns)

    def legacy_form(self) -> Redactor:
        """This redactor as it worked before placeholders carried a digest."""
        return Redactor(self.builtin, self.patterns, legacy=True)

    def _spans(self, data: bytes) -> list[Span]:
        spans = self._detectors.spans(data)
        for pattern in self._custom:
            spans = sorted(spans + _custom_spans(pattern, data, spans), key=lambda s: s[1])
        return spans

    def secrets(self, data: bytes) -> list[tuple[str, int, int]]:
        """Where the secrets in UTF-8 ``data`` are, in order: (kind, start, end), for a
        caller that keeps a text in pieces (logprob tokens) and rewrites them itself."""
        if not self.active:
            return []
        return [(kind, start, end) for kind, start, end in self._spans(data) if kind is not None]

    def placeholder(self, kind: str, value: bytes) -> bytes:
        """What replaces the secret ``value`` of ``kind``."""
        return _placeholder(kind, value, self.legacy)

    def find(self, text: str) -> Iterator[Found]:
        """Every secret in ``text``, in order."""
        data = text.encode("utf-8", "surrogatepass")
        for kind, start, end in self._spans(data):
            if kind is not None:
                yield Found(kind, data[start:end].decode("utf-8", "surrogatepass"))

    def text(self, text: str, live: bool = False) -> str:
        """``text`` with each secret replaced by its placeholder (``live``: literal
        placeholders first made placeholders of their own)."""
        if not self.active:
            return text
        if live:
            text = disarmed(text)
        data = text.encode("utf-8", "surrogatepass")
        spans = self._spans(data)
        if all(kind is None for kind, _, _ in spans):
            return text
        return self._settled(self._replaced(data, spans))

    def _settled(self, text: str) -> str:
        """Redacted ``text`` redacted again until nothing changes: a placeholder can end a
        run that a detector needed ended (a Google key right before a PEM header or a
        user pattern's match), and what is written must redact to itself."""
        for _ in range(_PASSES):
            data = text.encode("utf-8", "surrogatepass")
            if not self._custom and self._detectors.none(data):
                break
            spans = self._spans(data)
            if all(kind is None for kind, _, _ in spans):
                break
            text = self._replaced(data, spans)
        return text

    def might(self, raw: bytes, live: bool = False) -> bool:
        """Whether raw JSON bytes can hold a secret (or, ``live``, a literal placeholder):
        a regex over the bytes, so a body without one costs no JSON walk. User patterns
        may match what JSON escapes, so with them every body is walked."""
        return (
            bool(self._custom)
            or (self.builtin and _QUICK.search(raw) is not None)
            or (live and self.active and b"[REDACTED:" in raw)
        )

    def value(self, value: Any, live: bool = False) -> Any:
        """A JSON value with its strings (and object keys) redacted (``live``: literal
        placeholders first made placeholders of their own); the very same object when
        nothing was found, so callers can tell by identity."""
        strings: list[str] = []
        named: list[int] = []  # the values of fields named like a secret access key
        _gather(value, strings, named)
        own: dict[int, str] = {}  # literal placeholders made placeholders of their own
        if live and self.active:
            for i, text in enumerate(strings):
                if _LITERAL_START in text and (new := disarmed(text)) != text:
                    strings[i] = own[i] = new
        changed = own | self._strings(strings)
        if self.builtin and not self.legacy:  # "SecretAccessKey": "..." is one in JSON too
            for i in named:
                if i not in changed and _aws_secret(strings[i]):
                    changed[i] = _placeholder(AWS_SECRET, strings[i].encode(), False).decode()
        return _rebuild(value, changed, iter(range(len(strings)))) if changed else value

    def _strings(self, strings: list[str]) -> dict[int, str]:
        """The redacted form of those ``strings`` that hold a secret, by index. The built-in
        detectors run once over all of them joined by NUL, which none of them matches (one
        pass instead of one call per string: a body may hold millions of short strings);
        user patterns and the legacy form see each string alone."""
        if not self.active:
            return {}
        if self._custom or self.legacy:
            out = ((i, self.text(text)) for i, text in enumerate(strings))
            return {i: new for i, new in out if new is not strings[i]}
        pieces = [text.encode("utf-8", "surrogatepass") for text in strings]
        secrets = [s for s in self._detectors.spans(b"\0".join(pieces)) if s[0] is not None]
        changed: dict[int, str] = {}
        index, offset, found = 0, 0, 0
        while found < len(secrets):
            while secrets[found][1] > offset + len(pieces[index]):  # not in this string
                offset += len(pieces[index]) + 1
                index += 1
            local = []
            while found < len(secrets) and secrets[found][1] <= offset + len(pieces[index]):
                kind, start, end = secrets[found]
                local.append((kind, start - offset, end - offset))
                found += 1
            changed[index] = self._settled(self._replaced(pieces[index], local))
        return changed

    def _replaced(self, data: bytes, spans: Sequence[Span]) -> str:
        legacy = self.legacy
        out = _replace(data, spans, lambda kind, value: _placeholder(kind, value, legacy))
        return out.decode("utf-8", "surrogatepass")

    def json_bytes(self, raw: bytes, live: bool = False) -> bytes:
        """A JSON document's bytes redacted (``live``: see :meth:`value`); the same bytes
        when there is nothing to redact (so a recording keeps the upstream's exact bytes).
        Bytes that are not JSON are redacted as text."""
        if not self.active or not raw or not self.might(raw, live):
            return raw
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            text = raw.decode("utf-8", "replace")
            out = self.text(text, live)
            return raw if out == text else out.encode()
        redacted = self.value(document, live)
        return raw if redacted is document else orjson.dumps(redacted)

    def sse(self, raw: bytes) -> bytes:
        """A recorded event stream with each ``data:`` line redacted as JSON."""
        if not self.active or not raw or not self.might(raw):
            return raw
        lines = raw.splitlines(keepends=True)
        for i, line in enumerate(lines):
            text = line.rstrip(b"\r\n")
            payload = data_value(text)
            if payload is not None:
                redacted = self.json_bytes(payload)
                if redacted is not payload:  # the line keeps its own end (CRLF, LF or CR)
                    lines[i] = b"data: " + redacted + line[len(text) :]
        out = b"".join(lines)
        return raw if out == raw else out


def names_secret(field: str) -> bool:
    """Whether an object field is named like an AWS secret access key
    (``aws_secret_access_key``, ``SecretAccessKey``, ``secretAccessKey``)."""
    if len(field) < 15 or field[-1] not in "yY":  # most fields stop here, at C speed
        return False
    return field.lower().replace("_", "").replace("-", "").endswith("secretaccesskey")


_AWS_CHARS = string.ascii_letters + string.digits + "/+"


def _aws_secret(value: str) -> bool:
    """Whether a field named like a secret access key holds one: 40 characters of them."""
    return len(value) == 40 and not value.strip(_AWS_CHARS) and _two(value.encode())


def _gather(value: Any, out: list[str], named: list[int]) -> None:
    """Every string in a JSON value, object keys too, in the order :func:`_rebuild` visits,
    and in ``named`` the places of string values of fields :func:`names_secret`."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            _gather(item, out, named)
    elif isinstance(value, dict):
        for key, item in value.items():
            out.append(key)
            if isinstance(item, str) and names_secret(key):
                named.append(len(out))
            _gather(item, out, named)


def _rebuild(value: Any, changed: dict[int, str], order: Iterator[int]) -> Any:
    """``value`` with its n-th string replaced by ``changed[n]``; containers without a
    change under them are the very same objects."""
    if isinstance(value, str):
        return changed.get(next(order), value)
    if isinstance(value, list):
        items = [_rebuild(v, changed, order) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        pairs = [
            (changed.get(next(order), k), _rebuild(v, changed, order)) for k, v in value.items()
        ]
        same = all(a is k and b is v for (a, b), (k, v) in zip(pairs, value.items(), strict=True))
        return value if same else dict(pairs)
    return value
