"""One URL masker: a token in the user-name or password slot of any URL (upstream, Redis,
Redis Cluster nodes) never reaches a log, an error, /healthz, stats, the start-up line or
explain. The masker alone with hostile URLs, then a real `seedproxy serve`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest
import redis

from proxy.config import ConfigError, load_settings
from proxy.store import StoreError
from proxy.store.redis import RedisStore
from proxy.urls import masked_url
from tests.conftest import start_redis
from tests.harness import Serve, clean_env, free_port, http, serve_argv

TOKEN = "tok3n-in-the-user-slot"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://tok3n@host/0", "redis://***@host/0"),
        ("redis://:pw@host", "redis://***@host"),
        ("rediss://user:pw@host:6380/1", "rediss://***@host:6380/1"),
        ("http://user:pw@host:8000/v1", "http://***@host:8000/v1"),
        ("https://sk-token@host/v1", "https://***@host/v1"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("", ""),
        # a cluster's node list, with and without a space
        ("redis://a@h1:7000,redis://b:c@h2:7001", "redis://***@h1:7000,redis://***@h2:7001"),
        ("redis://:x@h1:7000, redis://:y@h2:7001", "redis://***@h1:7000, redis://***@h2:7001"),
        # no scheme: the text's start is an authority
        ("tok3n@host:6379/0", "***@host:6379/0"),
        ("user:pw@host", "***@host"),
        ("host:6379", "host:6379"),
        ("//user:pw@host/x", "//***@host/x"),
        # IPv6, with a zone
        ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
        ("redis://u:p@[fe80::1%25eth0]:6379/0", "redis://***@[fe80::1%25eth0]:6379/0"),
        ("redis://tok@[::1]", "redis://***@[::1]"),
        # '@' in the path, query or fragment is not user-info
        ("http://host/a@b", "http://host/a@b"),
        ("redis://:pw@host/0@x", "redis://***@host/0@x"),
        ("redis://u:p@h?x=a@b", "redis://***@h?x=a@b"),
        ("http://h#frag@x", "http://h#frag@x"),
        # percent-encoded, and an unencoded '@' in the password: the last '@' ends user-info
        ("redis://%74ok%40en@host", "redis://***@host"),
        ("redis://user:p%2Fw@host", "redis://***@host"),
        ("redis://:p@ss@host/0", "redis://***@host/0"),
        # an unencoded '/', '?' or '#' in the password cuts the authority short: "u:PW5"
        # has no port, so its user-info ends at the last '@'
        ("redis://u:PW5#SECRET@127.0.0.1:1/0", "redis://***@127.0.0.1:1/0"),
        ("http://u:PW5?SECRET@h/v1", "http://***@h/v1"),
        ("redis://:pw/SECRET@h", "redis://***@h"),
        ("redis://h:6379/0@x", "redis://h:6379/0@x"),  # a port: the '@' is the path's
        ("redis://[::1]/0@x", "redis://[::1]/0@x"),
        # a credential in the query: redis-py reads ?password=, gateways ?api_key=
        ("redis://h:6379/0?password=pw", "redis://h:6379/0?password=***"),
        ("redis://h?socket_timeout=3&PassWord=pw", "redis://h?socket_timeout=3&PassWord=***"),
        ("redis://h?pass%77ord=pw", "redis://h?pass%77ord=***"),
        (
            "https://h/v1?api-version=1&api_key=sk-x#top",
            "https://h/v1?api-version=1&api_key=***#top",
        ),
        ("https://h/v1?key=", "https://h/v1?key="),
        ("https://h/v1?x=1&keys=2", "https://h/v1?x=1&keys=2"),
        ("redis://h?password=a,b c&db=1", "redis://h?password=***&db=1"),
    ],
)
def test_masked_url(url, shown):
    assert masked_url(url) == shown


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://s3cr3t@h", "s3cr3t"),
        ("redis://user:s3cr3t@h", "s3cr3t"),
        ("redis://s3cr3t:x@h", "s3cr3t"),
        ("s3cr3t@h", "s3cr3t"),
        ("redis://a@b@s3cr3t@h/0", "s3cr3t"),
        ("http://x:s3cr3t@[2001:db8::1]:80/v1", "s3cr3t"),
        ("redis://n1:7000,redis://s3cr3t@n2:7001,redis://n3:7002", "s3cr3t"),
        ("redis://u:s3cr3t%40more@h", "s3cr3t"),
        ("redis://u:PW5#s3cr3t@127.0.0.1:1/0", "s3cr3t"),
        ("redis://u:pw/s3cr3t@h,redis://h2", "s3cr3t"),
        ("redis://h?password=s3cr3t", "s3cr3t"),
        ("redis://:a@h1?password=x,s3cr3t,redis://h2?token=c", "s3cr3t"),
        ("https://h/v1?access_token=s3cr3t&x=1", "s3cr3t"),
    ],
)
def test_no_credential_survives(url, secret):
    assert secret not in masked_url(url)


def test_the_masker_is_linear():
    """A long hostile value (many '//' and '@') is masked in one pass, not quadratically."""
    text = "//a@" * 200_000 + "host"
    assert masked_url(text).count("***") == 200_000


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own, with an ACL user named like a token (how a
    managed Redis spells a token in the user slot); stopped by the test when it must."""
    port = free_port()
    proc = start_redis(port, tmp_path)
    with redis.Redis.from_url(f"redis://127.0.0.1:{port}/0") as admin:
        admin.acl_setuser(TOKEN, enabled=True, nopass=True, keys="*", commands=["+@all"])
    yield port, proc
    proc.terminate()
    proc.wait(10)


def test_a_token_in_the_redis_user_slot_is_never_shown(own_redis, upstream, tmp_path):
    port, redis_proc = own_redis
    url = f"redis://{TOKEN}@127.0.0.1:{port}/0?password=pw-{TOKEN}"  # nopass takes any
    shown = f"redis://***@127.0.0.1:{port}/0?password=***"
    env = {
        "SEEDPROXY_CACHE_BACKEND": "redis",
        "SEEDPROXY_CACHE_REDIS_URL": url,
        "SEEDPROXY_LOG_LEVEL": "debug",
        "SEEDPROXY_LOG_FORMAT": "text",
    }
    up = f"http://up-{TOKEN}@127.0.0.1:{upstream.port}/v1"
    served = Serve(free_port(), upstream, env, "--upstream", up)
    base = f"http://127.0.0.1:{served.port}"
    seen: list[bytes] = []
    chat = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
    json = {"Content-Type": "application/json"}
    try:
        status, headers, body = http(base, "POST", "/v1/chat/completions", chat, json)
        assert status == 200 and headers["X-Cache"] == "MISS"
        status, _, body = http(base, "POST", "/_seedproxy/explain", chat, json)
        assert status == 200 and orjson.loads(body)["upstream"].startswith("http://***@")
        seen.append(body)
        redis_proc.terminate()  # the store goes away under a running proxy
        redis_proc.wait(10)
        status, _, body = http(base, "GET", "/healthz")
        health = orjson.loads(body)
        assert status == 200 and health["store"] == "unavailable", health
        # the store's own error names it (a loaded machine may first see /healthz's timeout)
        assert shown in health["store_error"] or "no answer within" in health["store_error"]
        seen.append(body)
        status, _, body = http(base, "GET", "/_seedproxy/stats")
        assert status == 200 and shown in orjson.loads(body)["store_error"]
        seen.append(body)
        status, headers, body = http(base, "POST", "/v1/chat/completions", chat, json)
        assert status == 200 and headers["X-Cache"] == "MISS"  # live, uncached
        status, _, body = http(
            base, "POST", "/v1/chat/completions", chat, json | {"Cache-Control": "only-if-cached"}
        )
        assert status == 503 and shown.encode() in body  # store_unavailable names the store
        seen.append(body)
    finally:
        served.stop()
    log = served.log.read_bytes()
    assert f"cache redis:{shown}".encode() in log  # the start-up line
    assert b"cache store unavailable" in log and shown.encode() in log
    for text in (*seen, log):
        assert TOKEN.encode() not in text


def serve_on_redis(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`seedproxy serve` on the Redis store at ``url``, expected to stop at start-up."""
    return subprocess.run(
        serve_argv(free_port(), "--cache-dir", str(tmp_path / "c")),
        env=clean_env() | {"SEEDPROXY_CACHE_BACKEND": "redis", "SEEDPROXY_CACHE_REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_store_that_refuses_the_user_slot_token_fails_without_showing_it(own_redis, tmp_path):
    port, _ = own_redis
    result = serve_on_redis(f"redis://not-{TOKEN}:pw-{TOKEN}@127.0.0.1:{port}/0", tmp_path)
    assert result.returncode == 2
    assert f"cannot reach redis://***@127.0.0.1:{port}/0" in result.stderr
    assert TOKEN not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"http://{TOKEN}@127.0.0.1:1/0", "must be a redis://, rediss:// or unix:// URL"),
        (f"{TOKEN}@127.0.0.1:6379", "must be a redis://, rediss:// or unix:// URL"),
        (f"redis://{TOKEN}@127.0.0.1:port/0", "is not a URL: its port is no number"),
        (f"redis://:{TOKEN}@[::1/0", "is not a URL: its host is malformed"),
        (f"rediss://u:{TOKEN}@h:99999/0", "is not a URL: its port is no number"),
        # urllib's own message would quote what it took for a port: a piece of the password
        (f"redis://u:{TOKEN[:5]}#{TOKEN}@127.0.0.1:1/0", "is not a URL: its port is no number"),
    ],
)
def test_a_redis_url_redis_py_cannot_read_is_one_masked_line(url, problem):
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"SEEDPROXY_CACHE_REDIS_URL": url})
    message = str(caught.value)
    assert message.startswith("SEEDPROXY_CACHE_REDIS_URL: ") and problem in message
    assert TOKEN not in message and TOKEN[:5] not in message
    assert "***@" in message and "\n" not in message


def test_serve_with_an_unreadable_redis_url_stops_with_one_line(tmp_path):
    result = serve_on_redis(f"http://{TOKEN}@127.0.0.1:1/0", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "seedproxy: SEEDPROXY_CACHE_REDIS_URL: must be a redis://, rediss:// or unix:// URL, "
        "got 'http://***@127.0.0.1:1/0'"
    ]


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
@pytest.mark.parametrize("slot", ["{}@", ":{}@", "u:{}@"], ids=["user", "password", "both"])
async def test_store_errors_mask_the_user_slot(cluster, slot):
    """A Redis (or Redis Cluster) store whose node cannot be reached says which, masked."""
    url = f"redis://{slot.format(TOKEN)}127.0.0.1:{free_port()}/0?password={TOKEN}"
    store = RedisStore(url, cluster=cluster)
    try:
        with pytest.raises(StoreError) as caught:
            await store.start()
    finally:
        await store.close()
    shown = f"{caught.value} {caught.value!r} {caught.value.__cause__!r}"
    assert TOKEN not in shown and "redis://***@127.0.0.1:" in shown
