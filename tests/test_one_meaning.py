"""Issue 18, item 3: one request, one meaning. The key describes exactly what the upstream
receives: the query string as sent, duplicate JSON keys refused, big integers exact; and
only a real completion of its endpoint is stored."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy import strictjson
from proxy.keys import canonical_query
from tests.harness import http
from tests.upstream import Scripted

pytestmark = pytest.mark.every_store

BODY = {"model": "gpt-one", "messages": [{"role": "user", "content": "one meaning"}]}
JSON = {"Content-Type": "application/json"}


def test_an_encoded_separator_is_one_parameter_not_two():
    assert canonical_query("a=1%26b%3D2") != canonical_query("a=1&b=2")


def test_repeated_parameters_keep_their_order_and_other_names_do_not_matter():
    assert canonical_query("a=1&a=2") != canonical_query("a=2&a=1")
    assert canonical_query("b=2&a=1&a=3") == canonical_query("a=1&a=3&b=2")


def _key(proxy, path: str, body: bytes = orjson.dumps(BODY)) -> str:
    status, headers, _ = http(proxy.url, "POST", path, body, JSON)
    assert status == 200
    return str(headers["X-Seedproxy-Key"])


def test_queries_that_reach_the_upstream_differently_have_different_keys(proxy, upstream):
    path = "/v1/chat/completions"
    assert _key(proxy, f"{path}?a=1%26b%3D2") != _key(proxy, f"{path}?a=1&b=2")
    assert _key(proxy, f"{path}?a=1&a=2") != _key(proxy, f"{path}?a=2&a=1")
    assert _key(proxy, f"{path}?a=1&b=2") == _key(proxy, f"{path}?b=2&a=1")
    assert {c.query for c in upstream.chat_calls} >= {"a=1%26b%3D2", "a=1&b=2"}


def _post(proxy, raw: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    return http(proxy.url, "POST", "/v1/chat/completions", raw, {**JSON, **(headers or {})})


def test_a_key_given_twice_is_refused(proxy, upstream):
    messages = '[{"role": "user", "content": "hi"}]'
    for raw in (
        f'{{"model": "m", "messages": {messages}, "messages": []}}',
        f'{{"model": "m", "messages" : {messages}, "messages"\n:[]}}',
        '{"model": "m", "messages": [{"role": "user", "role": "system", "content": "x"}]}',
    ):
        status, _, body = _post(proxy, raw.encode())
        assert status == 400, raw
        assert orjson.loads(body)["error"]["code"] == "duplicate_key"
    assert upstream.chat_calls == []


def test_strings_that_look_like_keys_are_not_duplicates(proxy, upstream):
    body = {**BODY, "messages": [{"role": "user", "content": '{"a": 1, "a": 2} \\":'}]}
    status, _, _ = _post(proxy, orjson.dumps(body))
    assert status == 200 and len(upstream.chat_calls) == 1


def test_integers_beyond_64_bits_are_keyed_and_sent_exactly(proxy, upstream):
    keys = set()
    for number in ("18446744073709551616", "18446744073709551617", "-9223372036854775809"):
        raw = b'{"model": "m", "n_big": ' + number.encode() + b', "messages": []}'
        status, headers, _ = _post(proxy, raw, {"X-Seedproxy-Seed-Mode": "override"})
        assert status == 200
        keys.add(headers["X-Seedproxy-Key"])
        assert number.encode() in upstream.chat_calls[-1].body
    assert len(keys) == 3
    assert strictjson.loads(b'{"a": 18446744073709551616}')["a"] == 2**64


def test_a_2xx_that_is_no_completion_is_passed_on_and_not_stored(proxy, upstream):
    error = {"error": {"message": "busy", "type": "server_error"}}
    upstream.script(Scripted(status=200, body={}), Scripted(status=200, body=error))
    first = _post(proxy, orjson.dumps(BODY))
    second = _post(proxy, orjson.dumps(BODY))
    assert (first[0], orjson.loads(first[2])) == (200, {})
    assert (second[0], orjson.loads(second[2])) == (200, error)
    third = _post(proxy, orjson.dumps(BODY))
    assert third[0] == 200 and third[1]["X-Cache"] == "MISS"
    hit = _post(proxy, orjson.dumps(BODY))
    assert hit[1]["X-Cache"] == "HIT" and hit[1]["X-Content-Type-Options"] == "nosniff"
    assert len(upstream.chat_calls) == 3
