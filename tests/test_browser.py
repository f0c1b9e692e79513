"""What a web page in the user's browser could do through a proxy on 127.0.0.1: DNS
rebinding, cross-site requests and forms; and a person opening the dashboard with tokens on."""

from __future__ import annotations

import base64

import orjson
import pytest

from proxy.browser import Guard, form_type, host_name, is_loopback
from tests.harness import http
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS

BODY = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
JSON = {"Content-Type": "application/json"}


def post(proxy, **headers: str) -> tuple[int, dict[str, str], dict]:
    status, got, raw = http(
        proxy.url, "POST", "/v1/chat/completions", body=BODY, headers=JSON | headers
    )
    return status, dict(got), orjson.loads(raw)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("localhost", True),
        ("app.localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.5", False),
        ("attacker.example", False),
        ("127.0.0.1.nip.io", False),
    ],
)
def test_loopback_names(host, loopback):
    assert is_loopback(host) is loopback


def test_host_names_lose_their_port():
    assert host_name("127.0.0.1:8080") == "127.0.0.1"
    assert host_name("[::1]:8080") == "::1"
    assert host_name("LOCALHOST") == "localhost"


def test_a_proxy_bound_elsewhere_answers_any_host_and_still_checks_origins():
    guard = Guard.of("0.0.0.0", (), ())
    assert not guard.refused_host("proxy.internal:8080")
    assert guard.refused_origin("http://evil.example", "proxy.internal:8080")
    assert not guard.refused_origin("http://proxy.internal:8080", "proxy.internal:8080")
    assert not guard.refused_origin(None, "proxy.internal:8080")  # not from a page


@pytest.mark.parametrize(
    ("content_type", "form"),
    [
        ("text/plain", True),
        ("text/plain;charset=UTF-8", True),
        ("application/x-www-form-urlencoded", True),
        ("multipart/form-data; boundary=x", True),
        ("application/json", False),
        (None, False),
    ],
)
def test_form_types(content_type, form):
    assert form_type(content_type) is form


def test_dns_rebinding_is_refused(proxy, upstream):
    port = proxy.url.rsplit(":", 1)[1]
    for host in (f"attacker.example:{port}", f"rebind.127.0.0.1.nip.io:{port}"):
        status, _, body = post(proxy, Host=host)
        assert status == 403 and body["error"]["code"] == "host_not_allowed"
        status, _, _ = http(proxy.url, "GET", "/_seedproxy/drift", headers={"Host": host})
        assert status == 403  # the admin pages too: they hold prompts and answers
    assert upstream.calls == []
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert post(proxy, Host=host)[0] == 200


def test_allowed_hosts_extend_the_loopback_names(make_proxy, upstream):
    proxy = make_proxy(server={"allowed_hosts": ["seedproxy.internal"]})
    assert post(proxy, Host="seedproxy.internal:8080")[0] == 200
    assert post(proxy, Host="other.internal")[0] == 403


def test_foreign_origins_are_refused_unless_listed(make_proxy, upstream):
    proxy = make_proxy(server={"cors_origins": ["https://notebook.example"]})
    status, _, body = post(proxy, Origin="https://evil.example")
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"
    status, _, _ = http(
        proxy.url, "GET", "/_seedproxy/stats", headers={"Origin": "https://evil.example"}
    )
    assert status == 403
    assert post(proxy, Origin="null")[0] == 403  # sandboxed frames and file: pages
    assert len(upstream.calls) == 0
    assert post(proxy, Origin="https://notebook.example")[0] == 200
    own = "http://" + proxy.url.split("://", 1)[1]
    assert post(proxy, Origin=own)[0] == 200  # the dashboard's own page


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"],
)
def test_json_endpoints_refuse_what_a_form_can_send(proxy, upstream, content_type):
    status, _, body = post(proxy, **{"Content-Type": content_type})
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    status, _, _ = http(
        proxy.url, "POST", "/_seedproxy/explain", body=BODY, headers={"Content-Type": content_type}
    )
    assert status == 415
    assert upstream.calls == []


def test_a_body_without_a_type_is_still_json(proxy):
    status, _, _ = http(proxy.url, "POST", "/v1/chat/completions", body=BODY)
    assert status == 200


def test_with_tokens_a_browser_opens_the_dashboard_with_basic_auth(make_proxy, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-proxy-own-key")
    proxy = make_proxy(auth={"tokens": ["tok-alice"]})
    status, headers, _ = http(proxy.url, "GET", "/_seedproxy/")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    basic = "Basic " + base64.b64encode(b"alice:tok-alice").decode()
    assert http(proxy.url, "GET", "/_seedproxy/", headers={"Authorization": basic})[0] == 200
    wrong = "Basic " + base64.b64encode(b"alice:tok-bob").decode()
    assert http(proxy.url, "GET", "/_seedproxy/", headers={"Authorization": wrong})[0] == 401
    # Basic is for a person's pages: API requests still need the bearer token
    status, headers, _ = http(
        proxy.url,
        "POST",
        "/v1/chat/completions",
        body=BODY,
        headers=JSON | {"Authorization": basic},
    )
    assert status == 401 and "WWW-Authenticate" not in headers

    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is missing: the test command installs Debian's chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                http_credentials={"username": "alice", "password": "tok-alice"}
            )
            page = context.new_page()
            response = page.goto(proxy.url + "/_seedproxy/")
            assert response is not None and response.status == 200
            assert "Stats" in page.content()
        finally:
            browser.close()
