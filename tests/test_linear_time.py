"""Patterns run on RE2 and large bodies are parsed and redacted off the loop: bodies built
to make a backtracking engine take minutes leave /healthz answering (issue: a 192 KB body
of ``eyJ`` runs held the loop 11.9 s)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from proxy.keys import Rewrite
from proxy.patterns import compile_str
from proxy.redact import Redactor
from tests.harness import Serve, free_port, http
from tests.upstream import FakeUpstream

pytestmark = pytest.mark.serial

MB = 1024 * 1024


def _content(kind: str, size: int) -> str:
    unit = {
        "eyJ": "eyJ",  # the pre-check's and the JWT detector's start, over and over
        "jwt-ish": "eyJabcdefgh.",  # a JWT's pieces, never completed
        "nested": "a" * 30 + "-",  # (a+)+-like runs for greedy classes
        "sk": "sk-",  # a key start whose class swallows the rest
    }[kind]
    return unit * (size // len(unit))


@pytest.fixture
def served(upstream: FakeUpstream, tmp_path) -> Iterator[Serve]:
    config = tmp_path / "c.toml"
    config.write_text(
        "[server]\nmax_body = 40_000_000\n"
        "[redact]\npatterns = ['(a+)+b', 'x[0-9a-f]{6}']\n"
        "[[cache.normalize]]\npattern = '(eyJ)+\\.'\nreplace = 'J.'\n"
    )
    serve = Serve(free_port(), upstream, {}, "--config", str(config), "--cache-dir", str(tmp_path))
    yield serve
    serve.stop()


class Poller:
    """A second client asking /healthz again and again while the big request runs."""

    def __init__(self, url: str) -> None:
        self.url, self.waits, self.done = url, [], threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.done.is_set():
            began = time.monotonic()
            status = http(self.url, "GET", "/healthz", timeout=30)[0]
            self.waits.append(time.monotonic() - began)
            assert status == 200
            self.done.wait(0.02)

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


@pytest.mark.parametrize(
    ("kind", "size", "cached_only"),
    [
        ("eyJ", MB, False),
        ("jwt-ish", MB, True),
        ("nested", MB, False),
        ("sk", MB, True),
        ("eyJ", 16 * MB, True),
        ("nested", 16 * MB, False),
    ],
)
def test_bodies_built_to_backtrack_leave_healthz_answering(served, kind, size, cached_only):
    url = f"http://127.0.0.1:{served.port}"
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": _content(kind, size)}]}
    )
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
    if cached_only:
        headers["Cache-Control"] = "only-if-cached"
    with Poller(url) as poller:
        status, _, answer = http(url, "POST", "/v1/chat/completions", body, headers, timeout=300)
    assert status == (504 if cached_only else 200), answer[:300]
    assert len(poller.waits) >= 2  # polled while it ran
    assert max(poller.waits) < 1.0, poller.waits  # a liveness bound, not a speed figure


def test_every_pattern_over_bodies_is_re2():
    """Look-around, which RE2 refuses, is refused everywhere a body is matched."""
    for compile_ in (compile_str, lambda p: Redactor(patterns=[p])):
        with pytest.raises(ValueError, match="not RE2 syntax"):
            compile_(r"a(?=b)")
    with pytest.raises(ValueError, match=r"\.pattern: .* not RE2 syntax"):
        Rewrite.parse({"pattern": r"(?<=a)b"})


@pytest.mark.parametrize(
    ("pattern", "replace", "text", "expected"),
    [
        (r"(\d+)-(\d+)", r"\2-\1", "10-20 and 3-4", "20-10 and 4-3"),
        (r"(?P<day>\d{2})\.(?P<month>\d{2})", r"\g<month>/\g<day>", "31.01", "01/31"),
        (r"id=(\w+)", "id=«\\1»\\n", "id=abc", "id=«abc»\n"),  # non-ASCII survives
        (r"x", "\\\\", "axb", "a\\b"),
        (r"(a)|b", r"[\1]", "ab", "[a][]"),  # a group that did not take part: empty
        ("日付", "date", "今日の日付", "今日のdate"),
    ],
)
def test_normalize_replace_keeps_re_sub_meaning(pattern, replace, text, expected):
    rule = Rewrite.parse({"pattern": pattern, "replace": replace})
    assert rule.apply({"s": text}) == {"s": expected}


@pytest.mark.parametrize(
    ("replace", "problem"),
    [(r"\3", "no group 3"), (r"\g<nope>", "no group nope"), (r"\q", "bad escape")],
)
def test_normalize_replace_is_checked_at_load(replace, problem):
    with pytest.raises(ValueError, match=problem):
        Rewrite.parse({"pattern": r"(a)(b)", "replace": replace})


def test_explain_of_a_body_built_to_backtrack_leaves_healthz_answering(served):
    url = f"http://127.0.0.1:{served.port}"
    body = orjson.dumps({"model": "m", "messages": [{"content": _content("jwt-ish", MB)}]})
    with Poller(url) as poller:
        status, _, answer = http(url, "POST", "/_seedproxy/explain", body, timeout=300)
    assert status == 200 and "[REDACTED:jwt:" in orjson.loads(answer)["canonical"]
    assert len(poller.waits) >= 2 and max(poller.waits) < 1.0, poller.waits
