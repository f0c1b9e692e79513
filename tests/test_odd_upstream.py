"""Issue 18, item 7: odd upstream values never break an entry. A system_fingerprint with
CR/LF, NUL or DEL, or of another JSON type, is stored as sent and served again and again:
the header shows it escaped."""

from __future__ import annotations

import orjson
import pytest

from proxy.answers import header_text
from proxy.kinds import fingerprint_of
from tests.harness import chat_completion, http
from tests.upstream import Scripted

ODD = [
    "fp\r\nSet-Cookie: stolen=1",
    "fp\x00nul",
    "fp\x7fdel",
    "fp\u2028é",
    ["a", 1],
    {"a": None},
    7,
]


def test_header_text_escapes_everything_but_printable_ascii():
    assert header_text("fp_abc 1") == "fp_abc 1"
    assert header_text("a\r\nb\x00\x7f\u2028") == "a\\u000d\\u000ab\\u0000\\u007f\\u2028"
    assert fingerprint_of(["a"]) == '["a"]' and fingerprint_of(None) is None


@pytest.mark.parametrize("fingerprint", ODD, ids=repr)
def test_an_odd_fingerprint_is_stored_as_sent_and_served_every_time(
    make_proxy, upstream, fingerprint
):
    proxy = make_proxy(cache={"fingerprint": "any"})
    upstream.script(
        Scripted(
            status=200,
            body=chat_completion(model="gpt-odd", fingerprint=fingerprint, id="chatcmpl-odd"),
        )
    )
    body = {"model": "gpt-odd", "messages": [{"role": "user", "content": "odd"}]}
    headers = {"Content-Type": "application/json"}
    seen = []
    for stream in (False, False, True):
        raw = orjson.dumps({**body, "stream": stream})
        status, got, answer = http(proxy.url, "POST", "/v1/chat/completions", raw, headers)
        assert status == 200, answer
        shown = got["X-Seedproxy-Fingerprint"]
        assert shown.isascii() and shown.isprintable()
        assert "Set-Cookie" not in got
        seen.append(got["X-Cache"])
        if not stream:
            assert orjson.loads(answer)["system_fingerprint"] == fingerprint
        else:
            assert b"data: [DONE]" in answer
    assert seen == ["MISS", "HIT", "HIT"]
    assert len(upstream.chat_calls) == 1
