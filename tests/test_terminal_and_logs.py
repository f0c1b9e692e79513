"""Issue 18, item 8 (the rest): a non-UTF-8 ``Authorization`` is no proxy token and a
credential of its own bytes (issue 28, item 11), log lines escape what a terminal or a log
viewer would act on (C1 controls, U+2028/U+2029; in text lines also C0 controls), and
aiohttp's own lines go through seedproxy's formatter."""

from __future__ import annotations

import io
import logging
import socket
from urllib.parse import urlsplit

import click
import orjson
import pytest

from proxy.cli import colored_diff
from proxy.observe import AIOHTTP_LOGGERS, JsonFormatter, TextFormatter, flush_logs, setup_logging

HOSTILE = "a\x85b\x9bc\u2028d\u2029e\x1b]52;c;SGk=\x07f\x1b[2J"


def raw_request(server_url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are (no client library would send a 0xff header)."""
    parts = urlsplit(server_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        sock.sendall(body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


CHAT = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "bytes"}]})
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nAuthorization: Bearer \xff\xfe-not-utf8\r\n"
)


def test_a_non_utf8_authorization_is_never_a_proxy_token(make_proxy, upstream, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-upstream-key-for-bytes")
    proxy = make_proxy(auth={"tokens": ("tok-a",)})
    status, body = raw_request(proxy.url, HEAD, CHAT)
    assert status == 401, body
    assert orjson.loads(body)["error"]["code"] == "invalid_proxy_token"
    assert not upstream.chat_calls


def test_a_non_utf8_credential_is_a_per_key_scope_of_its_own_bytes(make_proxy, upstream):
    """The credential is its bytes as sent: the same bytes share a scope, other bytes
    (one byte apart, or its Latin-1 reading as UTF-8) do not."""
    proxy = make_proxy(cache={"scope": "per-key"})
    other = HEAD.replace(b"\xff\xfe", b"\xff\xfd")
    utf8 = HEAD.replace(b"\xff\xfe", "\N{LATIN SMALL LETTER Y WITH DIAERESIS}".encode())
    assert [raw_request(proxy.url, head, CHAT)[0] for head in (HEAD, HEAD, other, utf8)] == [
        200
    ] * 4
    assert len(upstream.chat_calls) == 3  # the second is a hit


def test_a_non_utf8_authorization_the_proxy_does_not_read_is_forwarded(proxy, upstream):
    """Shared scope, no tokens: the header is the client's business with the upstream,
    passed on as sent (as nginx does), never a 500."""
    status, body = raw_request(proxy.url, HEAD, CHAT)
    assert status == 200, body
    assert len(upstream.chat_calls) == 1


@pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter])
def test_log_lines_escape_c1_controls_and_line_separators(formatter):
    line = formatter.line(0.0, "INFO", "seedproxy.test", HOSTILE, {"output": HOSTILE})
    for char in ("\x85", "\x9b", "\u2028", "\u2029", "\x1b", "\x07"):
        assert char not in line, repr(char)
    assert "\\u0085" in line and "\\u2028" in line
    if formatter is JsonFormatter:
        assert orjson.loads(line)["msg"] == HOSTILE  # escaped, not lost
    traced = formatter.with_exc(line, f"Traceback\n  {HOSTILE}")
    assert "\x85" not in traced and "\u2028" not in traced


def test_text_lines_keep_one_record_on_one_line():
    line = TextFormatter.line(0.0, "INFO", "x", "first\nsecond\rthird", {})
    assert "\n" not in line and "\r" not in line


@pytest.mark.parametrize("name", AIOHTTP_LOGGERS)
def test_aiohttp_tracebacks_go_through_the_json_formatter(name):
    stream = io.StringIO()
    setup_logging("json", "info", stream)
    try:
        try:
            raise RuntimeError(f"boom {HOSTILE}")
        except RuntimeError:
            logging.getLogger(name).exception("Error handling request")
        flush_logs()
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1
        record = orjson.loads(lines[0])
        assert record["logger"] == name and record["level"] == "error"
        assert "RuntimeError: boom" in record["exc"] and "\u2028" not in lines[0]
    finally:
        for logger in ("seedproxy", *AIOHTTP_LOGGERS):
            logging.getLogger(logger).handlers.clear()


def test_a_drift_diff_prints_stored_control_sequences_escaped_in_our_colours():
    diff = f"--- stored\n+++ live\n@@ -1 +1 @@\n-old {HOSTILE}\n+new \x1b[2J{HOSTILE}\n same"
    shown = colored_diff(diff)
    for char in ("\x85", "\x9b", "\u2028", "\x07"):
        assert char not in shown, repr(char)
    assert "\x1b]52" not in shown and "\x1b[2J" not in shown
    assert "\\u001b]52" in shown and click.style("+new", fg="green")[:5] in shown
    assert click.unstyle(shown).splitlines()[3].startswith("-old a\\u0085b")


STORED_NAME = "gpt\x1b]52;c;ZXZpbA==\x07\x1b[2J\u2028x"  # clipboard write, screen clear


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_the_cli_prints_stored_names_escaped(bg, store_config, cache_dir):
    """Model names and fingerprints are stored data: `drift`, `drift show` and
    `fingerprints` print them with what a terminal would act on escaped."""
    import asyncio

    from click.testing import CliRunner

    from proxy import drift
    from proxy.cli import main
    from proxy.store import Note
    from proxy.store.disk import DiskStore

    async def fill() -> str:
        store = DiskStore(cache_dir)
        event = drift.DriftEvent(
            drift.new_id(),
            1.0,
            "refresh",
            "k" * 64,
            "/v1/chat/completions",
            STORED_NAME,
            7,
            STORED_NAME,
            "fp",
            False,
            0.5,
            "--- cached\n+++ live\n-a\n+b\n",
        )
        await store.add_event(event.to_dict())
        await store.note(
            [Note("k" * 64, "/v1/chat/completions", STORED_NAME, STORED_NAME, 1.0, True)]
        )
        await store.close()
        return event.id

    event_id = asyncio.run(fill())
    runner = CliRunner()
    for args in (["drift"], ["drift", "show", event_id], ["fingerprints"]):
        result = runner.invoke(main, [*args, "--cache-dir", str(cache_dir)], color=True)
        assert result.exit_code == 0, result.output
        assert "\x1b]52" not in result.output and "\x1b[2J" not in result.output
        assert "\u2028" not in result.output and "\\u001b]52" in result.output


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/" + HOSTILE, '/v1/"quoted"\\'])
def test_an_access_line_is_the_line_any_record_would_give(path: str) -> None:
    """The access log writes its lines without a LogRecord, from fields it keeps written
    out: each line is the JSON (or text) line a logging call with the same data gives."""
    fields = ("POST", path, 200, "HIT")
    data = {"method": "POST", "path": path, "status": 200, "cache": "HIT", "ms": 1.25}
    json_formatter = JsonFormatter()
    for _ in range(2):  # written out, then from what was kept
        line = json_formatter.access(1796000000.123456, "seedproxy.access", fields, 1.25)
        record = JsonFormatter.line(1796000000.123456, "INFO", "seedproxy.access", "request", data)
        assert orjson.loads(line) == orjson.loads(record)
        assert line.isascii() or "\x85" not in line
    text = TextFormatter().access(1796000000.5, "seedproxy.access", fields, 1.25)
    assert text == TextFormatter.line(1796000000.5, "INFO", "seedproxy.access", "request", data)
