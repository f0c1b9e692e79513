"""Everything that is not a cached endpoint: forwarded untouched; errors in the OpenAI shape."""

from __future__ import annotations

import openai
import orjson
import pytest

from tests.conftest import sdk
from tests.harness import FAKE_KEY, http
from tests.upstream import Scripted

CHAT = "/v1/chat/completions"


def error_of(body: bytes) -> dict:
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_models_list_through_the_sdk(client, upstream):
    assert [m.id for m in client.models.list()] == ["gpt-test"]
    assert upstream.calls[-1].headers["Authorization"] == f"Bearer {FAKE_KEY}"


def test_request_is_forwarded_untouched(proxy, upstream):
    payload = bytes(range(256)) * 4096  # 1 MiB, not JSON
    status, headers, _ = http(
        proxy.url,
        "PUT",
        "/v1/files/abc?purpose=x&b=%2F&a=1",
        body=payload,
        headers={
            "X-Custom": "kept",
            "Authorization": "Bearer t",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "Proxy-Authorization": "Basic secret",
            "Content-Type": "application/octet-stream",
        },
    )
    assert status == 200
    seen = upstream.calls[-1]
    assert (seen.method, seen.path, seen.query) == ("PUT", "/v1/files/abc", "purpose=x&b=%2F&a=1")
    assert seen.body == payload
    assert seen.headers["X-Custom"] == "kept"
    assert seen.headers["Authorization"] == "Bearer t"
    for dropped in ("X-Drop-Me", "Proxy-Authorization"):
        assert dropped not in seen.headers
    assert seen.headers["Host"] == f"127.0.0.1:{upstream.port}"
    assert headers["X-Upstream"] == "fake" and headers["Set-Cookie"] == "a=b"


def test_upstream_cookies_are_not_kept_for_other_clients(make_proxy, upstream):
    # By host name, as the real API is (a cookie jar refuses IP addresses): Cloudflare's
    # Set-Cookie must reach the client that got it, and never ride along with other requests.
    proxy = make_proxy(upstream={"base_url": f"http://localhost:{upstream.port}/v1"})
    status, headers, _ = http(proxy.url, "GET", "/v1/files/first")
    assert status == 200 and headers["Set-Cookie"] == "a=b"
    http(proxy.url, "GET", "/v1/files/second")
    http(proxy.url, "GET", "/v1/files/third", headers={"Cookie": "mine=1"})
    assert "Cookie" not in upstream.calls[-2].headers
    assert upstream.calls[-1].headers["Cookie"] == "mine=1"


def test_upstream_errors_on_other_paths_pass_through(proxy, upstream):
    upstream.script(
        Scripted(
            404,
            body={"error": {"message": "no such file", "type": "x", "param": None, "code": "nf"}},
        )
    )
    status, _, body = http(proxy.url, "GET", "/v1/files/missing")
    assert status == 404 and orjson.loads(body)["error"]["message"] == "no such file"


def test_upstream_unreachable_is_502(bg, proxy, upstream):
    bg.run(upstream.stop())
    for method, path, body in (
        ("POST", CHAT, b'{"model":"m","messages":[]}'),
        ("GET", "/v1/models", None),
    ):
        status, _, raw = http(proxy.url, method, path, body=body)
        assert status == 502, path
        assert error_of(raw)["code"] == "upstream_unreachable"
    with sdk(proxy, max_retries=0) as client, pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=[])


def test_dns_failure_is_502(make_proxy):
    proxy = make_proxy(upstream={"base_url": "http://no-such-host.invalid/v1"})
    status, _, raw = http(proxy.url, "POST", CHAT, body=b'{"model":"m","messages":[]}')
    assert status == 502 and error_of(raw)["code"] == "upstream_unreachable"


def test_upstream_timeout_is_504(make_proxy, upstream):
    proxy = make_proxy(upstream={"timeout": 0.3})
    upstream.script(Scripted(200, stall=2.0))
    status, _, raw = http(proxy.url, "POST", CHAT, body=b'{"model":"m","messages":[]}')
    assert status == 504 and error_of(raw)["code"] == "upstream_timeout"
    upstream.script(Scripted(200, stall=2.0))
    status, _, raw = http(proxy.url, "GET", "/v1/models")
    assert status == 504


def test_dropped_connection_is_502_and_next_request_works(proxy, upstream):
    upstream.script(Scripted(drop=True))
    status, _, raw = http(proxy.url, "POST", CHAT, body=b'{"model":"m","messages":[]}')
    assert status == 502 and error_of(raw)["type"] == "api_error"
    status, headers, _ = http(proxy.url, "POST", CHAT, body=b'{"model":"m","messages":[]}')
    assert status == 200 and headers["X-Cache"] == "MISS"


def test_body_over_the_limit_is_413(make_proxy, upstream):
    proxy = make_proxy(server={"max_body": 1000})
    big = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]})
    status, _, raw = http(proxy.url, "POST", CHAT, body=big)
    assert status == 413 and error_of(raw)["code"] == "request_too_large"
    status, _, raw = http(proxy.url, "POST", "/v1/files", body=b"y" * 2000)
    assert status == 413 and error_of(raw)["code"] == "request_too_large"

    def chunks():
        for _ in range(10):
            yield b"z" * 500

    status, _, raw = http(proxy.url, "POST", "/v1/files", body=chunks())  # sent chunked
    assert status == 413
    assert all(len(c.body) < 1000 for c in upstream.calls)
    assert http(proxy.url, "GET", "/healthz")[0] == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"str"', "invalid_json"),
        (b"", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_bad_json_is_400(proxy, upstream, body, code):
    status, _, raw = http(
        proxy.url, "POST", CHAT, body=body, headers={"Content-Type": "application/json"}
    )
    assert status == 400 and error_of(raw)["code"] == code
    assert upstream.calls == []


@pytest.mark.parametrize("path", ["/v1/../admin", "/v1/files/%2e%2e/x", "/v1/a/./b"])
def test_dot_segments_never_leave_the_base(proxy, upstream, path):
    status, _, _ = http(proxy.url, "GET", path)
    assert status in (400, 404)
    assert all(c.path.startswith("/v1/") and ".." not in c.path for c in upstream.calls)


def test_unknown_paths_and_methods_are_openai_shaped(proxy):
    status, _, raw = http(proxy.url, "GET", "/nope")
    assert status == 404 and "Unknown path" in error_of(raw)["message"]
    status, headers, raw = http(proxy.url, "POST", "/healthz")
    assert status == 405 and set(headers["Allow"].split(",")) >= {"GET"}
    assert "Method POST is not allowed" in error_of(raw)["message"]
    status, headers, raw = http(proxy.url, "GET", "/_seedproxy/explain")
    assert status == 405 and headers["Allow"] == "POST"
    _, _, metrics = http(proxy.url, "GET", "/metrics")
    assert b'seedproxy_requests_total{cache="NONE",endpoint="unmatched"} 3.0' in metrics


def test_healthz(proxy):
    status, _, body = http(proxy.url, "GET", "/healthz")
    assert status == 200 and orjson.loads(body) == {"status": "ok", "store": "ok"}


def test_stats_count_what_happened(client, proxy):
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "a"}])
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "a"}])
    stats = orjson.loads(http(proxy.url, "GET", "/_seedproxy/stats")[2])
    assert (stats["hits"], stats["misses"], stats["stores"], stats["entries"]) == (1, 1, 1, 1)
    assert stats["hit_ratio"] == 0.5 and stats["tokens_saved"] > 0


def test_get_on_a_cached_path_is_passed_through(proxy, upstream):
    # GET /v1/chat/completions lists stored completions upstream: not ours to cache
    status, _, _ = http(proxy.url, "GET", CHAT + "?limit=2")
    assert status == 200 and upstream.calls[-1].method == "GET"
