"""Issue 28, item 5: the operator's policy wins. With proxy tokens a client may not pick its
own seed policy (``X-Seedproxy-Seed-Mode``) unless ``seed.allow_client_mode`` says so; a
comparison a client's seed mode caused counts under source ``client``, never ``traffic``,
so it cannot move a ``determinism --fail-under`` gate; under ``seed.mode = "require"``
nothing unseeded is ever stored. Through a real `seedproxy serve`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from proxy.config import ConfigError, load_settings
from tests.harness import Serve, clean_env, free_port, http, stored_bytes

UPSTREAM_KEY = "sk-upstream-seed-policy-key"
TOKEN = "tok-team"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
HEADER = "X-Seedproxy-Seed-Mode"
PROBE = [sys.executable, "-m", "proxy", "probe", "--model", "gpt-test", "--runs", "2"]


def chat(content: str, **body: object) -> bytes:
    return orjson.dumps(
        {"model": "gpt-test", "messages": [{"role": "user", "content": content}], **body}
    )


class Proxy:
    """`seedproxy serve` with a proxy token, on its own cache directory."""

    def __init__(self, upstream, cache: Path, **env: str) -> None:
        self.cache = cache
        settings = {"SEEDPROXY_AUTH_TOKENS": TOKEN, "OPENAI_API_KEY": UPSTREAM_KEY, **env}
        self.served = Serve(free_port(), upstream, settings, "--cache-dir", str(cache))
        self.url = f"http://127.0.0.1:{self.served.port}"

    def post(self, body: bytes, path: str = "/v1/chat/completions", **headers: str):
        status, got, raw = http(self.url, "POST", path, body, AUTH | headers)
        return status, got, orjson.loads(raw)

    def stop(self) -> None:
        self.served.stop()


@pytest.fixture
def proxies(upstream, tmp_path):
    started: list[Proxy] = []

    def start(**env: str) -> Proxy:
        started.append(Proxy(upstream, tmp_path / f"cache{len(started)}", **env))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


def test_the_default_follows_the_tokens(tmp_path):
    assert load_settings(env={}).client_seed_mode is True
    assert load_settings(env={"SEEDPROXY_AUTH_TOKENS": "t"}).client_seed_mode is False
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("t\n")
    with_file = {"SEEDPROXY_AUTH_TOKENS_FILE": str(tokens_file)}
    assert load_settings(env=with_file).client_seed_mode is False
    for value, allowed in (("true", True), ("false", False), ("no", False), (" Auto", None)):
        for tokens in ({}, {"SEEDPROXY_AUTH_TOKENS": "t"}, with_file):  # explicit wins
            env = {"SEEDPROXY_SEED_ALLOW_CLIENT_MODE": value, **tokens}
            expected = (not tokens) if allowed is None else allowed
            assert load_settings(env=env).client_seed_mode is expected
    config = tmp_path / "seed.toml"
    config.write_text('[auth]\ntokens = ["t"]\n[seed]\nallow_client_mode = true\n')
    assert load_settings(config, env={}).client_seed_mode is True
    with pytest.raises(ConfigError, match=r"^SEEDPROXY_SEED_ALLOW_CLIENT_MODE: expected true"):
        load_settings(env={"SEEDPROXY_SEED_ALLOW_CLIENT_MODE": "maybe"})


def test_with_tokens_the_header_is_a_403_naming_the_setting(proxies, upstream):
    proxy = proxies()
    for value in ("passthrough", "force", "<b>"):  # valid or not: refused all the same
        for path in ("/v1/chat/completions", "/_seedproxy/explain"):
            status, _, body = proxy.post(chat("hi"), path, **{HEADER: value})
            assert status == 403, body
            error = body["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["code"] == "seed_mode_not_allowed"
            assert "seed.allow_client_mode" in error["message"]
    assert not upstream.chat_calls
    status, got, _ = proxy.post(chat("hi"))  # without the header: the operator's policy
    assert status == 200 and got["X-Seedproxy-Seed"] == "12345"
    assert upstream.chat_calls[-1].json()["seed"] == 12345


def test_the_probe_says_the_proxy_refuses_its_seed_mode(proxies, upstream):
    proxy = proxies()
    for load in ([], ["--concurrency", "1,2"]):  # one run after another, and the experiment
        result = subprocess.run(
            [*PROBE, "--base-url", f"{proxy.url}/v1", *load],
            env=clean_env() | {"OPENAI_API_KEY": TOKEN},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        line = result.stderr.strip()
        assert line.startswith("seedproxy: probe: the proxy at the base URL refuses X-Seedproxy")
        assert "seed.allow_client_mode = true" in line and "\n" not in line
    assert not upstream.chat_calls


def test_with_tokens_an_operator_may_allow_client_seed_modes(proxies, upstream):
    proxy = proxies(SEEDPROXY_SEED_ALLOW_CLIENT_MODE="true")
    status, got, _ = proxy.post(chat("hi"), **{HEADER: "passthrough", "Cache-Control": "no-store"})
    assert status == 200 and "X-Seedproxy-Seed" not in got
    assert "seed" not in upstream.chat_calls[-1].json()
    result = subprocess.run(
        [*PROBE, "--seed", "7", "--base-url", f"{proxy.url}/v1", "--json"],
        env=clean_env() | {"OPENAI_API_KEY": TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [c.json()["seed"] for c in upstream.chat_calls[-2:]] == [7, 7]


def determinism(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "determinism", "--cache-dir", str(cache), *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_client_seed_modes_cannot_move_the_traffic_gate(proxies, upstream):
    """Five deterministic refreshes are the team's traffic (5 of 5 identical); twenty
    passthrough + no-cache requests on a nondeterministic upstream, with the seed mode
    allowed, are one client's experiment: counted, but as ``client``."""
    proxy = proxies(SEEDPROXY_SEED_ALLOW_CLIENT_MODE="true")
    for _ in range(6):  # recorded once, then refreshed five times
        assert proxy.post(chat("traffic"), **{"Cache-Control": "no-cache"})[0] == 200
    upstream.nondeterministic = True
    for _ in range(20):
        status, got, _ = proxy.post(
            chat("experiment", temperature=1),
            **{HEADER: "passthrough", "Cache-Control": "no-cache"},
        )
        assert status == 200 and got["X-Cache"] == "REFRESH"
    proxy.stop()  # its counters are flushed at shutdown
    gate = determinism(proxy.cache, "--fail-under", "0.9")
    assert gate.returncode == 0, gate.stdout + gate.stderr
    rows = orjson.loads(determinism(proxy.cache, "--json").stdout)["models"]
    by_source = {row["source"]: row for row in rows}
    assert by_source["traffic"]["compared"] == 5 and by_source["traffic"]["identical"] == 5
    assert by_source["client"]["compared"] == 19 and by_source["client"]["identical"] < 19


def test_under_require_nothing_unseeded_is_ever_stored(proxies, upstream):
    proxy = proxies(SEEDPROXY_SEED_MODE="require", SEEDPROXY_SEED_ALLOW_CLIENT_MODE="true")
    prompt = "never-stored-unseeded-prompt"
    status, _, body = proxy.post(chat(prompt))
    assert status == 400 and body["error"]["code"] == "missing_seed"  # the policy itself
    for directives in ({}, {"Cache-Control": "no-cache"}, {}, {"Cache-Control": "max-age=60"}):
        status, got, _ = proxy.post(chat(prompt), **{HEADER: "passthrough"}, **directives)
        assert status == 200 and got["X-Cache"] == "BYPASS", got
    streamed = http(
        proxy.url,
        "POST",
        "/v1/chat/completions",
        chat(prompt, stream=True),
        AUTH | {HEADER: "passthrough"},
    )
    assert streamed[0] == 200 and streamed[1]["X-Cache"] == "BYPASS"
    assert len(upstream.chat_calls) == 5  # each one live: nothing stored to answer from
    assert all("seed" not in c.json() for c in upstream.chat_calls)
    # a seeded request through the same header is cached as usual
    seeded = chat("a seeded prompt", seed=3)
    assert proxy.post(seeded, **{HEADER: "passthrough"})[1]["X-Cache"] == "MISS"
    assert proxy.post(seeded, **{HEADER: "passthrough"})[1]["X-Cache"] == "HIT"
    proxy.stop()
    stored = b"".join(stored_bytes({"backend": "disk", "dir": str(proxy.cache)}))
    assert b"a seeded prompt" in stored and prompt.encode() not in stored
    export = subprocess.run(
        [sys.executable, "-m", "proxy", "export", "-", "--cache-dir", str(proxy.cache)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert export.returncode == 0 and "exported 1 entry" in export.stderr, export.stderr
    assert prompt not in export.stdout
    replay = Proxy(  # the same cache, offline
        upstream,
        proxy.cache,
        SEEDPROXY_SEED_MODE="require",
        SEEDPROXY_SEED_ALLOW_CLIENT_MODE="true",
        SEEDPROXY_CACHE_MODE="replay",
    )
    try:
        status, _, body = replay.post(chat(prompt), **{HEADER: "passthrough"})
        assert status == 504 and body["error"]["code"] == "cache_miss"
        assert "never recorded" in body["error"]["message"]
        assert replay.post(seeded, **{HEADER: "passthrough"})[1]["X-Cache"] == "HIT"
    finally:
        replay.stop()
    assert len(upstream.chat_calls) == 6
