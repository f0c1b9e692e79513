"""Planted secrets (a client API key, a proxy token, the proxy's own upstream key) never
appear in the cache, an export, the logs at any level, the dashboard, /metrics or an error."""

from __future__ import annotations

import subprocess
import sys
import threading

import openai
import orjson
import pytest

from tests.harness import FAKE_KEY, clean_env, http, serve_argv, stored_bytes
from tests.upstream import Scripted

pytestmark = pytest.mark.every_store

TOKEN = "tok-planted-proxy-token-5b1e"
UPSTREAM_KEY = "sk-planted-upstream-key-77c2"
MESSAGES = [{"role": "user", "content": "Secret-free answer please"}]


def exercise(proxy, upstream, api_key: str) -> list[bytes]:
    """Every kind of traffic; returns the bodies of every error the proxy answered."""
    errors: list[bytes] = []
    with openai.OpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0) as client:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)  # hit
        with client.chat.completions.stream(
            model="gpt-test",
            messages=MESSAGES,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        ) as s:
            s.get_final_completion()
        client.embeddings.create(model="emb", input="x")
        client.responses.create(model="gpt-test", input="y")
        upstream.nondeterministic = True
        client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, extra_headers={"Cache-Control": "no-cache"}
        )  # drift
        upstream.fingerprint = "fp_new"
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "z"}]
        )
        client.models.list()
        for scripted in (
            Scripted(401),
            Scripted(429, headers={"Retry-After": "1"}),
            Scripted(200, body=b"{broken"),
            Scripted(drop=True),
        ):
            upstream.script(scripted)
            with pytest.raises(openai.APIError) as err:
                client.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "fail"}]
                )
            errors.append(err.value.response.content)
        for bad in ({"seed": "7"}, {"seed": True}):
            with pytest.raises(openai.BadRequestError) as err:
                client.chat.completions.create(model="gpt-test", messages=MESSAGES, **bad)
            errors.append(err.value.response.content)
    headers = {"Authorization": f"Bearer {api_key}"}
    for method, path, body in (
        ("POST", "/v1/chat/completions", b"{nope"),
        ("POST", "/v1/chat/completions", b"[]"),
        ("GET", "/nowhere", None),
        ("POST", "/_seedproxy/explain?path=/v1/x", b"{}"),
    ):
        errors.append(http(proxy.url, method, path, body=body, headers=headers)[2])
    errors.append(
        http(proxy.url, "GET", "/v1/models", headers={"Authorization": f"Bearer wrong-{api_key}"})[
            2
        ]
    )
    return errors


def surfaces(proxy, store_env, api_key: str, tmp_path) -> dict[str, bytes]:
    auth = {"Authorization": f"Bearer {api_key}"}
    export = tmp_path / "export.jsonl"
    base = clean_env()
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "export", str(export)],
        env=base | store_env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return {
        "export": export.read_bytes(),
        "dashboard": http(proxy.url, "GET", "/_seedproxy/", headers=auth)[2],
        "metrics": http(proxy.url, "GET", "/metrics", headers=auth)[2],
        "stats": http(proxy.url, "GET", "/_seedproxy/stats", headers=auth)[2],
        "drift": http(proxy.url, "GET", "/_seedproxy/drift", headers=auth)[2],
    }


def assert_absent(secrets: list[str], blobs: dict[str, bytes]) -> None:
    for name, blob in blobs.items():
        for secret in secrets:
            assert secret.encode() not in blob, f"{secret} found in {name}"


def test_client_key_never_stored_or_shown(
    make_proxy, upstream, logs, store_config, store_env, tmp_path
):
    proxy = make_proxy(log={"level": "debug"}, cache={"verify_rate": 1.0})
    errors = exercise(proxy, upstream, FAKE_KEY)
    assert upstream.chat_calls[0].headers["Authorization"] == f"Bearer {FAKE_KEY}"
    blobs = surfaces(proxy, store_env, FAKE_KEY, tmp_path)
    assert b"drift" in blobs["dashboard"] and b"gpt-test" in blobs["export"]
    proxy.stop()
    blobs |= {f"store#{i}": b for i, b in enumerate(stored_bytes(store_config))}
    blobs |= {f"error#{i}": b for i, b in enumerate(errors)}
    blobs["logs"] = logs.text.encode()
    assert '"level":"debug"' in logs.text or '"level":"info"' in logs.text
    assert_absent([FAKE_KEY], blobs)


def test_proxy_token_and_upstream_key_never_stored_or_shown(
    make_proxy, upstream, logs, store_config, store_env, tmp_path, monkeypatch
):
    monkeypatch.setenv("PLANTED_UPSTREAM_KEY", UPSTREAM_KEY)
    proxy = make_proxy(
        log={"level": "debug"},
        auth={"tokens": (TOKEN,)},
        upstream={"api_key_env": "PLANTED_UPSTREAM_KEY"},
    )
    errors = exercise(proxy, upstream, TOKEN)
    assert {c.headers["Authorization"] for c in upstream.calls} == {f"Bearer {UPSTREAM_KEY}"}
    blobs = surfaces(proxy, store_env | {"SEEDPROXY_AUTH_TOKENS": TOKEN}, TOKEN, tmp_path)
    proxy.stop()
    blobs |= {f"store#{i}": b for i, b in enumerate(stored_bytes(store_config))}
    blobs |= {f"error#{i}": b for i, b in enumerate(errors)}
    blobs["logs"] = logs.text.encode()
    assert_absent([TOKEN, UPSTREAM_KEY], blobs)


def test_serve_process_output_has_no_secrets(tmp_path, upstream):
    """stdout and stderr of a real `seedproxy serve` at debug level, tokens on."""
    from tests.harness import free_port

    port = free_port()
    env = clean_env() | {
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "SEEDPROXY_AUTH_TOKENS": TOKEN,
        "SEEDPROXY_LOG_LEVEL": "debug",
    }
    proc = subprocess.Popen(
        serve_argv(
            port,
            *("--upstream", f"{upstream.url}/v1"),
            *("--cache-dir", str(tmp_path / "c")),
            *("--host", "0.0.0.0"),
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    ready = threading.Event()
    threading.Thread(target=lambda: (proc.stdout.readline(), ready.set()), daemon=True).start()
    assert ready.wait(30)
    try:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN) as client:
            client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        with (
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0
            ) as client,
            pytest.raises(openai.AuthenticationError),
        ):
            client.models.list()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert_absent([TOKEN, UPSTREAM_KEY], {"stdout": out, "stderr": err})
    assert b'"path":"/v1/chat/completions"' in err
    assert orjson.loads(err.splitlines()[0])["level"] in ("warning", "info", "debug")


def _serve_stderr(host: str, cache_dir) -> bytes:
    """What ``seedproxy serve --host HOST`` writes to stderr until it is listening (or has
    given up: a name this machine cannot resolve)."""
    from tests.harness import free_port

    proc = subprocess.Popen(
        serve_argv(free_port(), "--host", host, "--cache-dir", str(cache_dir)),
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    ready = threading.Event()
    threading.Thread(target=lambda: (proc.stdout.readline(), ready.set()), daemon=True).start()
    assert ready.wait(30)
    proc.terminate()
    return proc.communicate(timeout=20)[1]


def test_non_loopback_without_tokens_warns(tmp_path, upstream):
    assert b"without auth.tokens" in _serve_stderr("0.0.0.0", tmp_path / "c")


@pytest.mark.parametrize("host", ["localhost.", "app.localhost"])
def test_loopback_names_without_tokens_do_not_warn(tmp_path, upstream, host):
    # the one loopback check (browser.is_loopback) decides, as it does for the Host guard
    assert b"without auth.tokens" not in _serve_stderr(host, tmp_path / "c")
