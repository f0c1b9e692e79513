"""Slow clients (issue 18 item 10): a body or headers that never complete are cut after
``server.body_timeout`` / ``server.header_timeout``, while everyone else is served."""

from __future__ import annotations

import socket
import time

import orjson
import pytest

from proxy.config import load_settings
from tests.harness import ProxyServer, http

pytestmark = pytest.mark.serial


@pytest.fixture
def backend() -> str:
    return "disk"  # the store plays no part


TIMEOUT = 0.5
MARGIN = 5.0  # the answer must come within the configured timeout plus this
CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})


def head(extra: str = "") -> bytes:
    """A chat request's head, announcing the whole of BODY."""
    return (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n{extra}\r\n"
    ).encode()


def connect(proxy: ProxyServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.settimeout(TIMEOUT + MARGIN)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the proxy sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def half_body(proxy: ProxyServer, path: str, content_type: str = "application/json") -> bytes:
    """Send the headers and half the body, then nothing; what the proxy answers, and only
    once it has closed the connection (which must happen within the margin)."""
    with connect(proxy) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
            + BODY[: len(BODY) // 2]
        )
        started = time.monotonic()
        answer = read_all(sock)
        assert time.monotonic() - started < TIMEOUT + MARGIN
    return answer


def served_meanwhile(proxy: ProxyServer) -> None:
    status, _, _ = http(proxy.url, "POST", CHAT, BODY, {"Content-Type": "application/json"})
    assert status == 200


@pytest.mark.parametrize("path", [CHAT, "/_seedproxy/explain", "/v1/files"])
def test_a_body_that_never_completes_gets_408_and_a_closed_connection(make_proxy, upstream, path):
    proxy = make_proxy(server={"body_timeout": TIMEOUT})
    answer = half_body(proxy, path)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"Connection: close" in head
    error = orjson.loads(body)["error"]
    assert error["code"] == "request_timeout" and "server.body_timeout" in error["message"]
    if path == CHAT:
        assert upstream.calls == []  # nothing went upstream for half a request


def test_a_trickled_body_is_cut_at_the_deadline_not_at_each_pause(make_proxy):
    # a byte at a time, each well within the timeout, never finishing in time overall
    proxy = make_proxy(server={"body_timeout": 1.0})
    with connect(proxy) as sock:
        sock.sendall(head())
        started = time.monotonic()
        sock.settimeout(0.2)
        answer = b""
        for byte in BODY:
            try:
                sock.sendall(bytes([byte]))
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 1.0 + MARGIN


def test_others_are_served_while_a_body_stalls(make_proxy):
    proxy = make_proxy(server={"body_timeout": 3.0})
    with connect(proxy) as sock:
        sock.sendall(head() + BODY[:10])
        served_meanwhile(proxy)
        assert read_all(sock).startswith(b"HTTP/1.1 408 ")


def test_headers_that_never_complete_close_the_connection(make_proxy):
    proxy = make_proxy(server={"header_timeout": TIMEOUT})
    with connect(proxy) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty".encode())
        started = time.monotonic()
        served_meanwhile(proxy)
        assert read_all(sock) == b""  # closed, nothing of a request was there to answer
        assert time.monotonic() - started < TIMEOUT + MARGIN


def test_a_complete_slow_body_within_the_timeout_is_served(make_proxy):
    proxy = make_proxy(server={"body_timeout": 10.0})
    with connect(proxy) as sock:
        sock.sendall(head("Connection: close\r\n") + BODY[:10])
        time.sleep(0.3)
        sock.sendall(BODY[10:])
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")


def test_timeouts_have_documented_defaults_and_must_be_positive():
    server = load_settings(env={}).server
    assert (server.body_timeout, server.header_timeout) == (30.0, 75.0)
    with pytest.raises(ValueError, match="SEEDPROXY_SERVER_BODY_TIMEOUT: must be positive"):
        load_settings(env={"SEEDPROXY_SERVER_BODY_TIMEOUT": "0"})
