"""Issue 18, item 6: careless configuration is caught. An empty proxy token stops the proxy
with one line; credentials in ``upstream.base_url`` are sent as Basic auth (only when the
client forwards no Authorization of its own) and shown nowhere; with tokens on, key
material in the upstream's error bodies is masked before a client sees it."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import orjson
import pytest

from proxy.config import ConfigError, load_settings
from proxy.redact import mask_key_material
from tests.harness import FAKE_KEY, clean_env, free_port, http, serve_argv
from tests.upstream import Scripted

PASSWORD = "pw-planted-in-url-3c9d"
TOKEN = "tok-careless-config-1"
UPSTREAM_KEY = "sk-careless-upstream-key-8e1f"
LEAKY = (
    "Incorrect API key provided: sk-proj-********************************************9f3k. "
    f"You can find your API key at https://platform.openai.com/account/api-keys ({UPSTREAM_KEY})"
)
CHAT = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "careless"}]})
JSON = {"Content-Type": "application/json"}


def _serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    clean = clean_env()
    return subprocess.run(
        serve_argv(free_port(), "--cache-dir", str(tmp_path / "c")),
        env=clean | env,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "source"),
    [
        ({"SEEDPROXY_AUTH_TOKENS": ","}, "SEEDPROXY_AUTH_TOKENS"),
        ({"SEEDPROXY_AUTH_TOKENS": "good,"}, "SEEDPROXY_AUTH_TOKENS"),
        ({"SEEDPROXY_AUTH_TOKENS": " "}, "SEEDPROXY_AUTH_TOKENS"),
    ],
)
def test_an_empty_token_in_the_environment_stops_the_proxy(tmp_path, env, source):
    done = _serve(tmp_path, env)
    assert done.returncode != 0
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and source in lines[0] and "empty token" in lines[0], lines


@pytest.mark.parametrize("tokens", ['[""]', '["good", ""]', '["   "]'])
def test_an_empty_token_in_the_file_stops_the_proxy(tmp_path, tokens):
    config = tmp_path / "seedproxy.toml"
    config.write_text(f"[auth]\ntokens = {tokens}\n")
    with pytest.raises(ConfigError, match=r"auth\.tokens: an empty token") as caught:
        load_settings(str(config), env={})
    assert "\n" not in str(caught.value)


def test_a_tokens_file_with_no_token_stops_the_proxy(tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("\n   \n# only a comment\n\t\n")
    done = _serve(tmp_path, {"SEEDPROXY_AUTH_TOKENS_FILE": str(tokens_file)})
    assert done.returncode != 0
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "auth.tokens_file" in lines[0] and "no token" in lines[0], lines


def test_blank_lines_around_tokens_in_a_file_are_skipped(tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("\n  \nalpha\n\t\n beta \n")
    settings = load_settings(env={"SEEDPROXY_AUTH_TOKENS_FILE": str(tokens_file)})
    assert settings.proxy_tokens() == ("alpha", "beta")


def _with_password(url: str) -> str:
    return url.replace("http://", f"http://robot:{PASSWORD}@")


def test_url_credentials_are_basic_auth_only_without_a_client_authorization(
    make_proxy, upstream, logs
):
    proxy = make_proxy(upstream={"base_url": _with_password(f"{upstream.url}/v1")})
    bearer = JSON | {"Authorization": f"Bearer {FAKE_KEY}"}
    status, _, answer = http(proxy.url, "POST", "/v1/chat/completions", CHAT, bearer)
    assert status == 200, answer  # aiohttp refuses URL credentials plus Authorization: no 500
    assert upstream.calls[-1].headers["Authorization"] == f"Bearer {FAKE_KEY}"
    status, _, _ = http(proxy.url, "GET", "/v1/models", None, {})
    assert status == 200
    basic = base64.b64encode(f"robot:{PASSWORD}".encode()).decode()
    assert upstream.calls[-1].headers["Authorization"] == f"Basic {basic}"
    status, _, explained = http(proxy.url, "POST", "/_seedproxy/explain", CHAT, JSON)
    assert status == 200 and b"***" in explained
    assert PASSWORD.encode() not in explained
    # an answer from the upstream naming its own URL does not give the password away
    upstream.script(Scripted(status=400, body={"error": {"message": f"bad: {PASSWORD}"}}))
    status, _, relayed = http(proxy.url, "POST", "/v1/chat/completions", b"{}", bearer)
    assert status == 400 and PASSWORD.encode() not in relayed
    assert PASSWORD not in logs.text


def test_url_credentials_never_appear_in_error_messages_or_logs(make_proxy, logs):
    dead = f"http://robot:{PASSWORD}@127.0.0.1:{free_port()}/v1"
    proxy = make_proxy(upstream={"base_url": dead}, log={"level": "debug"})
    status, _, answer = http(proxy.url, "POST", "/v1/chat/completions", CHAT, JSON)
    assert status == 502 and b"127.0.0.1" in answer
    assert PASSWORD.encode() not in answer
    status, _, answer = http(proxy.url, "GET", "/v1/models", None, {})
    assert status == 502 and PASSWORD.encode() not in answer
    proxy.stop()
    assert "upstream failing" in logs.text and PASSWORD not in logs.text


def test_a_bad_base_url_is_reported_without_its_password():
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"SEEDPROXY_UPSTREAM_BASE_URL": f"ftp://robot:{PASSWORD}@host/v1"})
    assert PASSWORD not in str(caught.value) and "***@host" in str(caught.value)


@pytest.fixture
def tokened(make_proxy, monkeypatch):
    monkeypatch.setenv("CARELESS_UPSTREAM_KEY", UPSTREAM_KEY)
    return make_proxy(auth={"tokens": (TOKEN,)}, upstream={"api_key_env": "CARELESS_UPSTREAM_KEY"})


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/v1/chat/completions", CHAT), ("GET", "/v1/models", None)],
)
def test_with_tokens_key_material_in_upstream_errors_is_masked(
    tokened, upstream, method, path, body
):
    upstream.script(Scripted(status=401, body={"error": {"message": LEAKY, "code": "bad_key"}}))
    headers = JSON | {"Authorization": f"Bearer {TOKEN}"}
    status, _, answer = http(tokened.url, method, path, body, headers)
    assert status == 401
    error = orjson.loads(answer)["error"]
    assert error["code"] == "bad_key" and "Incorrect API key provided" in error["message"]
    for leaked in ("9f3k", "sk-proj", UPSTREAM_KEY):
        assert leaked not in error["message"], leaked


def test_without_tokens_the_clients_own_error_is_relayed_as_sent(proxy, upstream):
    """The key in it is the client's own: nothing to hide from it."""
    upstream.script(Scripted(status=401, body={"error": {"message": LEAKY}}))
    headers = JSON | {"Authorization": f"Bearer {FAKE_KEY}"}
    status, _, answer = http(proxy.url, "POST", "/v1/chat/completions", CHAT, headers)
    assert status == 401 and orjson.loads(answer)["error"]["message"] == LEAKY


def test_key_shaped_text_is_masked_and_ordinary_words_are_not():
    masked = mask_key_material(b"key sk-abc***9f3k, Bearer abcdefghijklmnopqrst; pw", ["pw"])
    assert masked == b"key [REDACTED:key], Bearer [REDACTED:key]; [REDACTED:key]"
    plain = b"task-based risk-free desk-top sk-1"
    assert mask_key_material(plain) == plain
    assert mask_key_material(b"sk-abc***9f3k", ["secret"], shapes=False) == b"sk-abc***9f3k"
