"""Compare the outputs of two responses and describe the difference. Pure."""

from __future__ import annotations

import array
import base64
import difflib
import math
import sys
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .keys import field_diff


def outputs(response: dict[str, Any]) -> list[dict[str, Any]]:
    """What a completion said, per choice; ids, timestamps and usage are left out."""
    result = []
    choices = response.get("choices")
    for choice in sorted(
        choices if isinstance(choices, list) else [],
        key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0,
    ):
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if not isinstance(message, dict):
            message = {}
        calls = []
        for call in message.get("tool_calls") or []:
            fn = (call.get("function") or {}) if isinstance(call, dict) else {}
            calls.append({"name": fn.get("name"), "arguments": fn.get("arguments")})
        result.append(
            {
                "index": choice.get("index", 0),
                "content": message.get("content", choice.get("text")),
                "refusal": message.get("refusal"),
                "tool_calls": calls,
                "finish_reason": choice.get("finish_reason"),
            }
        )
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


def text(outs: list[dict[str, Any]]) -> str:
    """What the outputs say, the text a divergence is measured in: per choice its content,
    refusal and tool calls (``name(arguments)``), one line each, choices in index order.
    Unlike :func:`render` it has no ``[choice N] finish_reason=...`` lines, so that a
    position counts characters of what the model wrote."""
    parts: list[str] = []
    for out in outs:
        if out["content"] is not None:
            parts.append(str(out["content"]))
        if out["refusal"] is not None:
            parts.append(str(out["refusal"]))
        parts.extend(f"{c['name']}({c['arguments']})" for c in out["tool_calls"])
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where two texts first differ, counted from 1 as "diverged at token 103" counts
    (102 tokens agreed): ``chars`` is the position of the first character that differs
    (or where the shorter text ended), so ``chars == shared_prefix_chars + 1``; ``words``
    is the position of the word it falls in, words being runs of non-whitespace, and a
    difference in the whitespace after word k (or one text ending right after it) falling
    in word k + 1."""

    chars: int
    words: int
    shared_prefix_chars: int

    def fields(self) -> dict[str, int]:
        """The names drift events, reports and the probe use."""
        return {
            "divergence_chars": self.chars,
            "divergence_words": self.words,
            "shared_prefix_chars": self.shared_prefix_chars,
        }


_BLOCK = 4096  # characters compared at once (at C speed) before narrowing down one by one


def shared_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many items (characters of a string, lines of a list) ``a`` and ``b`` share at
    their start. Linear, and mostly slice comparisons: no Python-level step per item but
    the last block's."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i : min(i + _BLOCK, n)] == b[i : min(i + _BLOCK, n)]:
        i += _BLOCK
    i = min(i, n)
    while i < n and a[i] == b[i]:
        i += 1
    return i


def divergence(a: str, b: str) -> Divergence | None:
    """Where ``a`` and ``b`` first differ (see :class:`Divergence`); None when they are equal."""
    if a == b:
        return None
    n = shared_prefix(a, b)
    # A word the difference cuts through is the word it diverged in; a finished one is not.
    cut = n > 0 and not a[n - 1].isspace() and (_continues(a, n) or _continues(b, n))
    return Divergence(n + 1, len(a[:n].split()) + (0 if cut else 1), n)


def _continues(s: str, n: int) -> bool:
    return n < len(s) and not s[n].isspace()


def _affixes(a: Sequence[Any], b: Sequence[Any]) -> tuple[int, int]:
    """The lengths of what ``a`` and ``b`` share at their start and, after that, at their end."""
    head = shared_prefix(a, b)
    tail = shared_prefix(a[head:][::-1], b[head:][::-1])
    return head, tail


@dataclass(frozen=True, slots=True)
class Comparison:
    similarity: float
    diff: str
    divergence: Divergence | None = None  # where the output texts first differ, if they do
    path: str = ""  # where the outputs compared first differ (``outputs[0].content``)


DIFF_CHARS = 64_000  # per side a drift diff keeps: comparing costs more than linearly
TRUNCATED = "… diff truncated"
# difflib's matcher costs up to quadratic time in what it is given (two 63,000-character
# answers took 39 s): it is only given parts this small, the rest is bounded work.
MATCH_LINES = 2_000  # differing lines per side aligned line by line; more are one change
MATCH_CHARS = 2_000  # differing characters per side matched within a changed block
MATCH_BUDGET = 16_000  # characters matched within changed blocks per comparison, in all


def bounded(lines: list[str], budget: int = DIFF_CHARS) -> list[str]:
    """``lines`` up to ``budget`` characters, then a :data:`TRUNCATED` line: what is stored,
    compared and drawn stays small whatever an upstream answered."""
    out: list[str] = []
    for line in lines:
        if len(line) >= budget:
            if line:
                out.append(line[:budget])
            out.append(TRUNCATED)
            return out
        budget -= len(line) + 1
        out.append(line)
    return out


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> Comparison | None:
    """None when two answers' outputs are equal; else their similarity and a unified diff
    (of at most :data:`DIFF_CHARS` per side)."""
    if a == b:
        return None
    where = divergence(text(a), text(b))
    la, lb = bounded(render(a)), bounded(render(b))
    codes = opcodes(la, lb)
    first = field_diff(a, b, "outputs", limit=1)[0]
    return Comparison(round(similarity(la, lb, codes), 4), unified(la, lb, codes), where, first)


Opcode = tuple[str, int, int, int, int]  # as difflib's: tag, a[i1:i2], b[j1:j2]


def opcodes(a: list[str], b: list[str]) -> list[Opcode]:
    """How lines ``a`` become lines ``b``, in bounded time: the lines both start and end
    with are equal; between them, up to :data:`MATCH_LINES` a side are aligned by difflib,
    more are replaced whole (a correct diff, if not the shortest)."""
    head, tail = _affixes(a, b)
    ea, eb = len(a) - tail, len(b) - tail
    codes: list[Opcode] = [("equal", 0, head, 0, head)] if head else []
    if ea - head <= MATCH_LINES and eb - head <= MATCH_LINES:
        matcher = difflib.SequenceMatcher(None, a[head:ea], b[head:eb])
        codes += [
            (tag, i1 + head, i2 + head, j1 + head, j2 + head)
            for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        ]
    elif ea > head or eb > head:  # too many to align: one block, cheap to write out
        codes.append(("replace", head, ea, head, eb))
    if tail:
        codes.append(("equal", ea, len(a), eb, len(b)))
    return codes


def similarity(a: list[str], b: list[str], codes: list[Opcode]) -> float:
    """As difflib's ratio, 2 * matching characters / all characters of the lines joined,
    where what matches is: equal lines (as ``codes`` aligned them) and, within changed
    blocks, the characters their ends share and those difflib matches in the first
    :data:`MATCH_CHARS` of the rest, up to :data:`MATCH_BUDGET` in all. A common
    subsequence, so never above the true share; bounded time whatever the answers."""
    total = sum(map(len, a)) + sum(map(len, b)) + max(len(a) - 1, 0) + max(len(b) - 1, 0)
    if not total:
        return 1.0
    matched, budget = 0, MATCH_BUDGET
    for tag, i1, i2, j1, j2 in codes:
        if tag == "equal":
            matched += sum(map(len, a[i1:i2])) + i2 - i1 - 1  # the lines, the breaks between
        elif tag == "replace":
            x, y = "\n".join(a[i1:i2]), "\n".join(b[j1:j2])
            head, tail = _affixes(x, y)
            mx, my = x[head : len(x) - tail][:MATCH_CHARS], y[head : len(y) - tail][:MATCH_CHARS]
            matched += head + tail
            if budget > 0 and mx and my:
                budget -= len(mx) + len(my)
                blocks = difflib.SequenceMatcher(None, mx, my).get_matching_blocks()
                matched += sum(block.size for block in blocks)
    return min(1.0, 2 * matched / total)


def unified(a: list[str], b: list[str], codes: list[Opcode]) -> str:
    """The unified diff of lines ``a`` (cached) and ``b`` (live) with full context, as
    difflib writes it: it holds both sides whole, so both can be shown again (:func:`sides`)."""
    if all(tag == "equal" for tag, *_ in codes):
        return ""
    lines = ["--- cached", "+++ live", f"@@ -{_range(len(a))} +{_range(len(b))} @@"]
    for tag, i1, i2, j1, j2 in codes:
        if tag == "equal":
            lines.extend(" " + line for line in a[i1:i2])
            continue
        lines.extend("-" + line for line in a[i1:i2])
        lines.extend("+" + line for line in b[j1:j2])
    return "\n".join(lines)


def _range(length: int) -> str:
    """A hunk's range from the first line, as difflib's ``_format_range_unified``."""
    return "1" if length == 1 else f"{1 if length else 0},{length}"


SHORT_LINES, SHORT_CHARS = 12, 1_200  # a diff shown in a test report


def short_diff(diff: str) -> str:
    """A stored full-context diff made short for a report: each change with a line of
    context either side (``…`` for what is left out), at most :data:`SHORT_LINES` lines
    and :data:`SHORT_CHARS` characters. Bounded work, as :func:`opcodes` is."""
    cached, live = sides(diff)
    if not cached and not live:  # not the diff of two texts (embeddings): as it is
        lines = diff.splitlines()
    else:
        lines = ["--- cached", "+++ live"]
        codes = opcodes(cached, live)
        for n, (tag, i1, i2, j1, j2) in enumerate(codes):
            if tag != "equal":
                lines.extend("-" + line for line in cached[i1:i2])
                lines.extend("+" + line for line in live[j1:j2])
                continue
            block = [" " + line for line in cached[i1:i2]]
            after, before = int(n > 0), int(n < len(codes) - 1)  # next to a change
            if len(block) <= after + before:
                lines.extend(block)
            else:
                lines.extend([*block[:after], "…", *block[len(block) - before :]])
    kept = bounded([line[:200] for line in lines[:SHORT_LINES]], SHORT_CHARS)
    if len(lines) > SHORT_LINES and kept[-1] != TRUNCATED:
        kept.append(f"… {len(lines) - SHORT_LINES} more lines")
    return "\n".join(kept)


def sides(diff: str) -> tuple[list[str], list[str]]:
    """The (cached, live) lines a full-context unified diff was made from."""
    cached: list[str] = []
    live: list[str] = []
    for line in diff.splitlines():
        if line.startswith(("---", "+++", "@@")):
            continue
        tag, text = line[:1], line[1:]
        if tag in (" ", "-"):
            cached.append(text)
        if tag in (" ", "+"):
            live.append(text)
    return cached, live


def response_outputs(response: dict[str, Any]) -> list[dict[str, Any]]:
    """What a Responses API answer said, per output item (messages and function calls)."""
    result = []
    items = response.get("output")
    for index, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict) or item.get("type") not in ("message", "function_call"):
            continue  # reasoning items carry per-call ids and encrypted content
        parts = [p for p in item.get("content") or [] if isinstance(p, dict)]
        texts = [p.get("text") or "" for p in parts if p.get("type") == "output_text"]
        refusals = [p.get("refusal") or "" for p in parts if p.get("type") == "refusal"]
        calls = (
            [{"name": item.get("name"), "arguments": item.get("arguments")}]
            if item["type"] == "function_call"
            else []
        )
        result.append(
            {
                "index": index,
                "content": "".join(texts) if texts else None,
                "refusal": "".join(refusals) if refusals else None,
                "tool_calls": calls,
                "finish_reason": response.get("status"),
            }
        )
    return result


def _vectors(response: dict[str, Any]) -> list[list[float]]:
    data = response.get("data")
    vectors = []
    for item in sorted(
        data if isinstance(data, list) else [],
        key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0,
    ):
        embedding = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(embedding, str):  # encoding_format = "base64": little-endian float32
            floats = array.array("f")
            floats.frombytes(base64.b64decode(embedding))
            if sys.byteorder == "big":
                floats.byteswap()
            vectors.append(floats.tolist())
        elif isinstance(embedding, list):
            vectors.append([float(x) for x in embedding])
    return vectors


def compare_embeddings(
    cached: dict[str, Any], live: dict[str, Any], tolerance: float
) -> Comparison | None:
    """None when every component differs by at most ``tolerance``; else the mean cosine
    similarity and one line per vector that moved."""
    a, b = _vectors(cached), _vectors(live)
    if [len(v) for v in a] != [len(v) for v in b]:
        shape = f"-{[len(v) for v in a]} vectors/dimensions\n+{[len(v) for v in b]}"
        return Comparison(0.0, f"--- cached\n+++ live\n{shape}", path="data")
    lines, cosines, moved = [], [], []
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        deltas = [abs(x - y) for x, y in zip(u, v, strict=True)]
        worst = max(deltas, default=0.0)
        norm = math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))
        cosine = sum(x * y for x, y in zip(u, v, strict=True)) / norm if norm else 1.0
        cosines.append(cosine)
        if worst > tolerance:
            moved.append(i)
            lines.append(
                f"embedding {i}: max |delta| {worst:.3g} at dimension "
                f"{deltas.index(worst)}, cosine similarity {cosine:.6f}"
            )
    if not lines:
        return None
    mean = sum(cosines) / len(cosines) if cosines else 1.0
    return Comparison(
        round(mean, 6),
        "--- cached\n+++ live\n" + "\n".join(lines),
        path=f"data[{moved[0]}].embedding",
    )


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
    owner: str | None = None  # per-key scope: the credential scope that may see it
    # where the output texts first differ (see Divergence); None for embeddings, and when
    # only a finish_reason differs
    divergence_chars: int | None = None
    divergence_words: int | None = None
    shared_prefix_chars: int | None = None
    path: str = ""  # where the outputs first differ (``outputs[0].content``)

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
