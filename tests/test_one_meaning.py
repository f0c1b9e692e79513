"""Issue 18, item 3: one request, one meaning. The key describes exactly what the upstream
receives: the query string as sent, duplicate JSON keys refused, big integers exact; and
only a real completion of its endpoint is stored."""

from __future__ import annotations

import orjson

from proxy.keys import canonical_query
from tests.harness import http

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
