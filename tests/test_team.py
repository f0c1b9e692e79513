"""Sharing across a team (the store contract is in test_store.py): Redis limits, coalescing
across processes, --workers, proxy tokens, namespaces and upstream identity."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
import redis

from proxy.store import Entry, open_store
from proxy.store.disk import CHECKPOINT_EVERY, CHECKPOINT_PUTS, checkpoint_due
from proxy.traffic import Traffic
from tests.conftest import sdk
from tests.harness import (
    FAKE_KEY,
    Serve,
    clean_env,
    free_port,
    http,
    proxy_settings,
    serve_argv,
    until,
)
from tests.upstream import FakeUpstream

pytestmark = pytest.mark.every_store

MESSAGES = [{"role": "user", "content": "Team question"}]
UPSTREAM_KEY = "sk-upstream-team-key-do-not-leak"
TOKEN = "team-token-1"


def entry(key: str, fp: str | None, created: float, body: bytes = b"{}") -> Entry:
    return Entry(
        key,
        fp,
        created,
        200,
        "application/json",
        "/v1/chat/completions",
        "m",
        1,
        2,
        3,
        body,
        b'{"model":"m"}',
    )


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
async def test_disk_size_limit_evicts_the_oldest_entries(store_config, cache_dir, upstream):
    config = store_config | {"size_limit": 512 * 1024}
    store = open_store(proxy_settings(cache_dir, upstream.url, cache=config))
    try:
        for i in range(40):  # 40 entries of 40 KB: three times the limit
            await store.put(entry(f"k{i}", "fp", float(i), b"x" * 40_000))
        await store.checkpoint()  # eviction runs here, off the request path
        _, volume = await store.size()
        assert volume <= 512 * 1024
        assert await store.variants("k0") == []
        assert (await store.variants("k39"))[0].body == b"x" * 40_000
    finally:
        await store.close()


def test_checkpoints_follow_the_writes_or_the_clock():
    assert not checkpoint_due(0, 0.0)
    assert not checkpoint_due(CHECKPOINT_PUTS - 1, CHECKPOINT_EVERY - 0.1)
    assert checkpoint_due(CHECKPOINT_PUTS, 0.0)
    assert checkpoint_due(0, CHECKPOINT_EVERY)


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
async def test_disk_folds_the_write_ahead_log_in_once_enough_was_written(
    store_config, cache_dir, upstream
):
    database = cache_dir / "entries" / "cache.db"
    moments = []

    class Watched(Traffic):
        async def quiet_moment(self, wait: float = 1.0) -> None:  # when no answer is expected
            moments.append(database.stat().st_size)

    store = open_store(proxy_settings(cache_dir, upstream.url, cache=store_config), Watched())
    try:
        for i in range(5):
            await store.put(entry(f"k{i}", "fp", 1.0, b"x" * 1000))
        size = database.stat().st_size
        await store.checkpoint()
        assert database.stat().st_size == size  # not due: the pages stay in the log
        assert moments == []  # and nothing waited for
        for i in range(CHECKPOINT_PUTS):
            await store.put(entry(f"m{i}", "fp", 1.0, b"x" * 1000))
        await store.checkpoint()
        assert moments == [size]  # waited for, then
        assert database.stat().st_size > size  # folded into the database
        # and the log already started over (and synced its header), so that the next put,
        # perhaps on the event loop, appends without syncing
        with contextlib.closing(sqlite3.connect(database)) as connection:
            _, frames, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames == 1
        assert (await store.variants("k0"))[0].body == b"x" * 1000
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
async def test_disk_reads_from_memory_never_outlive_a_commit(store_config, cache_dir, upstream):
    """A hot key is read from memory, yet every change is seen at once: one made through
    this store, through another connection, or by another process."""
    settings = proxy_settings(cache_dir, upstream.url, cache=store_config)
    mine, other = open_store(settings), open_store(settings)

    async def body() -> bytes:
        return (await mine.variants("k"))[0].body

    try:
        await mine.put(entry("k", "fp", 1.0, b'{"a":1}'))
        first = await mine.variants("k")  # read once: not kept yet
        assert await mine.variants("k") is not first
        assert await mine.variants("k") is await mine.variants("k")  # from memory
        await other.put(entry("k", "fp", 2.0, b'{"a":2}'))
        assert await body() == b'{"a":2}'
        await mine.put(entry("k", "fp", 3.0, b'{"a":3}'))
        assert await body() == b'{"a":3}'
        await mine.put(entry("k", "fp", 4.0, b'{"a":4}'))
        assert await body() == b'{"a":4}'
        script = (
            "import asyncio, sys\nfrom pathlib import Path\n"
            "from proxy.store.disk import DiskStore\nfrom tests.test_team import entry\n"
            "async def main():\n    store = DiskStore(Path(sys.argv[1]))\n"
            "    await store.put(entry('k', 'fp', 5.0, b'{\"a\":5}'))\n"
            "    await store.close()\nasyncio.run(main())\n"
        )
        other_process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(cache_dir), cwd=Path(__file__).parent.parent
        )
        assert await other_process.wait() == 0
        assert await body() == b'{"a":5}'
        await other.delete("k")
        assert await mine.variants("k") == []
    finally:
        await mine.close()
        await other.close()


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_entry_ttl_and_memory_bound(store_config, cache_dir, upstream):
    url = store_config["redis_url"]
    config = store_config | {"redis_entry_ttl": 3600, "redis_maxmemory": 256 * 1024**2}
    store = open_store(proxy_settings(cache_dir, upstream.url, cache=config))
    client = redis.Redis.from_url(url)
    before = client.config_get("maxmemory*")
    try:
        await store.start()
        await store.put(entry("k", "fp", 1.0))
        assert 3500 < client.ttl("seedproxy:e:k") <= 3600
        assert client.config_get("maxmemory")["maxmemory"] == str(256 * 1024**2)
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lru"
        assert client.ttl("seedproxy:counters") == -2  # registry, events, counters: no TTL
    finally:
        await store.close()
        client.config_set("maxmemory", before["maxmemory"])
        client.config_set("maxmemory-policy", before["maxmemory-policy"])
        client.close()


# -- several processes ---------------------------------------------------------------------


def post_many(ports: list[int], n: int, body: bytes) -> list[tuple[int, str, bytes]]:
    async def go() -> list[tuple[int, str, bytes]]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> tuple[int, str, bytes]:
                async with session.post(
                    f"http://127.0.0.1:{ports[i % len(ports)]}/v1/chat/completions",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as r:
                    return r.status, r.headers.get("X-Cache", ""), await r.read()

            return await asyncio.gather(*(one(i) for i in range(n)))

    return asyncio.run(go())


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
def test_two_processes_on_one_redis_make_one_upstream_call(upstream, store_env):
    upstream.latency = 0.5
    env = store_env | {"SEEDPROXY_CACHE_LOCK_TTL": "5s"}
    a, b = Serve(free_port(), upstream, env), Serve(free_port(), upstream, env)
    try:
        body = orjson.dumps({"model": "gpt-test", "messages": MESSAGES})
        results = post_many([a.port, b.port], 20, body)
    finally:
        a.stop()
        b.stop()
    assert [r[0] for r in results] == [200] * 20
    assert len(upstream.chat_calls) == 1
    assert len({r[2] for r in results}) == 1


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_a_waiter_goes_upstream_itself_after_a_crashed_holder(upstream, store_env):
    upstream.gate = threading.Event()  # the first call hangs at the upstream
    env = store_env | {"SEEDPROXY_CACHE_LOCK_TTL": "1s", "SEEDPROXY_LOG_LEVEL": "debug"}
    holder, waiter = Serve(free_port(), upstream, env), Serve(free_port(), upstream, env)
    body = orjson.dumps({"model": "gpt-test", "messages": MESSAGES})
    try:

        def doomed() -> None:
            with contextlib.suppress(aiohttp.ClientError):  # its proxy is killed below
                post_many([holder.port], 1, body)

        first = threading.Thread(target=doomed, daemon=True)
        first.start()
        until(lambda: bool(upstream.chat_calls))
        result: list = []
        second = threading.Thread(target=lambda: result.extend(post_many([waiter.port], 1, body)))
        second.start()
        until(lambda: b"waiting for another process's answer" in waiter.log.read_bytes())
        assert len(upstream.chat_calls) == 1  # the waiter waits on the holder's marker
        holder.stop(signal.SIGKILL)
        upstream.gate.set()  # the upstream would answer now, to a dead holder
        second.join(30)
        assert result and result[0][0] == 200
        assert len(upstream.chat_calls) == 2  # the waiter went itself once the marker expired
    finally:
        holder.stop()
        waiter.stop()


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_workers_share_the_port_the_cache_and_the_counters(upstream, store_env):
    upstream.latency = 0.2
    port = free_port()
    served = Serve(port, upstream, store_env | {"SEEDPROXY_LOG_LEVEL": "info"}, "--workers", "2")
    try:
        same = orjson.dumps({"model": "gpt-test", "messages": MESSAGES})
        results = post_many([port], 20, same)
        assert len(upstream.chat_calls) == 1  # coalesced within and across the workers
        assert len({r[2] for r in results}) == 1
        distinct = [
            post_many(
                [port],
                1,
                orjson.dumps(
                    {"model": "gpt-test", "messages": [{"role": "user", "content": f"q{i}"}]}
                ),
            )
            for i in range(10)
        ]
        assert all(d[0][0] == 200 for d in distinct)
        deadline = time.monotonic() + 10
        while True:  # each worker flushes its counters every second
            stats = orjson.loads(http(f"http://127.0.0.1:{port}", "GET", "/_seedproxy/stats")[2])
            if (stats["requests"], stats["stores"]) == (30, 11) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert stats["requests"] == 30
        assert stats["hits"] + stats["misses"] == 30
        assert stats["stores"] == 11
    finally:
        served.stop()
    pids = {
        orjson.loads(line)["pid"]
        for line in served.log.read_text().splitlines()
        if line.startswith("{") and '"path":"/v1/chat/completions"' in line
    }
    assert len(pids) == 2  # both workers served requests
    assert served.proc.returncode == 0


# -- proxy tokens --------------------------------------------------------------------------


@pytest.fixture
def guarded(make_proxy, monkeypatch, tmp_path):
    monkeypatch.setenv("TEAM_UPSTREAM_KEY", UPSTREAM_KEY)
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# team tokens\nfile-token-2\n")
    return make_proxy(
        auth={"tokens": (TOKEN,), "tokens_file": str(tokens_file)},
        upstream={"api_key_env": "TEAM_UPSTREAM_KEY"},
    )


def test_tokens_guard_everything_but_healthz(guarded, upstream):
    for bad in (FAKE_KEY, "", "team-token-"):
        with (
            openai.OpenAI(base_url=guarded.base_url, api_key=bad or "x", max_retries=0) as c,
            pytest.raises(openai.AuthenticationError) as err,
        ):
            c.chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert err.value.code == "invalid_proxy_token"
    for path in (
        "/_seedproxy/stats",
        "/_seedproxy/drift",
        "/_seedproxy/",
        "/metrics",
        "/v1/models",
        "/nope",
    ):
        status, _, body = http(guarded.url, "GET", path)
        assert status == 401, path
        assert orjson.loads(body)["error"]["type"] == "authentication_error"
    assert http(guarded.url, "POST", "/_seedproxy/explain", body=b"{}")[0] == 401
    assert http(guarded.url, "GET", "/healthz")[0] == 200
    assert upstream.calls == []  # nothing happened before the check


def test_valid_tokens_get_the_proxys_own_upstream_key(guarded, upstream, logs):
    for token in (TOKEN, "file-token-2"):
        with openai.OpenAI(base_url=guarded.base_url, api_key=token) as client:
            client.chat.completions.create(model="gpt-test", messages=MESSAGES)
            client.models.list()
    assert [c.headers["Authorization"] for c in upstream.calls] == [f"Bearer {UPSTREAM_KEY}"] * 3
    assert (
        http(guarded.url, "GET", "/_seedproxy/stats", headers={"Authorization": f"Bearer {TOKEN}"})[
            0
        ]
        == 200
    )
    assert UPSTREAM_KEY not in logs.text and TOKEN not in logs.text


def test_tokens_without_an_upstream_key_refuse_to_start(tmp_path, upstream):
    env = clean_env()
    env.pop("OPENAI_API_KEY", None)
    result = subprocess.run(
        serve_argv(free_port(), "--cache-dir", str(tmp_path / "c")),
        env=env | {"SEEDPROXY_AUTH_TOKENS": "a,b"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "upstream.api_key_env: $OPENAI_API_KEY is not set" in result.stderr


# -- namespaces ----------------------------------------------------------------------------


def create(client, **extra):
    return client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, **extra
    ).headers["x-cache"]


def test_namespaces_never_serve_each_others_entries(proxy, upstream):
    with sdk(proxy) as client:
        a = {"extra_headers": {"X-Seedproxy-Namespace": "team-a"}}
        b = {"extra_headers": {"X-Seedproxy-Namespace": "team.b_2"}}
        assert [create(client, **a), create(client, **b), create(client)] == ["MISS"] * 3
        assert [create(client, **a), create(client, **b), create(client)] == ["HIT"] * 3
        with pytest.raises(openai.BadRequestError) as err:
            create(client, extra_headers={"X-Seedproxy-Namespace": "../etc"})
        assert err.value.code == "invalid_namespace"
    assert len(upstream.chat_calls) == 3


def test_per_key_scope_isolates_credentials(make_proxy, upstream):
    proxy = make_proxy(cache={"scope": "per-key"})
    with (
        openai.OpenAI(base_url=proxy.base_url, api_key="sk-alice-0") as alice,
        openai.OpenAI(base_url=proxy.base_url, api_key="sk-bob-0") as bob,
    ):
        assert [create(alice), create(bob), create(alice), create(bob)] == [
            "MISS",
            "MISS",
            "HIT",
            "HIT",
        ]
    shared = make_proxy()
    with (
        openai.OpenAI(base_url=shared.base_url, api_key="sk-carol-0") as carol,
        openai.OpenAI(base_url=shared.base_url, api_key="sk-dave-0") as dave,
    ):
        assert [create(carol), create(dave)] == ["MISS", "HIT"]


# -- upstream identity ---------------------------------------------------------------------


def test_different_upstreams_never_share_entries(make_proxy, upstream, bg):
    other = FakeUpstream()
    other.fingerprint = "fp_other"
    bg.run(other.start())
    try:
        first = make_proxy()
        second = make_proxy(upstream={"base_url": f"{other.url}/v1"})
        with sdk(first) as a, sdk(second) as b:
            assert [create(a), create(b), create(a), create(b)] == ["MISS", "MISS", "HIT", "HIT"]
        assert len(upstream.chat_calls) == len(other.chat_calls) == 1
    finally:
        bg.run(other.stop())


def test_azure_deployment_with_api_key_and_api_version(make_proxy, upstream):
    proxy = make_proxy(upstream={"base_url": f"{upstream.url}/openai/deployments/gpt-4o"})
    azure_key = "azure-client-key-1"

    def client(version: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=proxy.base_url,
            api_key="unused",
            default_headers={"api-key": azure_key},
            default_query={"api-version": version},
        )

    with client("2024-06-01") as june, client("2024-10-21") as october:
        assert [create(june), create(june), create(october)] == ["MISS", "HIT", "MISS"]
    seen = upstream.chat_calls[0]
    assert seen.path == "/openai/deployments/gpt-4o/chat/completions"
    assert seen.query == "api-version=2024-06-01"
    assert seen.headers["api-key"] == azure_key


def test_azure_with_proxy_tokens_sends_the_api_key_header(make_proxy, upstream, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", UPSTREAM_KEY)
    proxy = make_proxy(
        upstream={
            "base_url": f"{upstream.url}/openai/deployments/gpt-4o",
            "api_key_env": "AZURE_OPENAI_API_KEY",
            "api_key_header": "api-key",
        },
        auth={"tokens": (TOKEN,)},
    )
    with openai.OpenAI(
        base_url=proxy.base_url, api_key=TOKEN, default_query={"api-version": "2024-06-01"}
    ) as client:
        assert create(client) == "MISS"
    seen = upstream.chat_calls[0]
    assert seen.headers["api-key"] == UPSTREAM_KEY
    assert "Authorization" not in seen.headers
