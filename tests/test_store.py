"""The Store contract, every part, on the disk cache, one Redis, a real Redis Cluster and the
memory store; Redis failures as StoreError; what a cluster adds: entries over every master,
the meta keys in one slot, a master killed under traffic."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import diskcache
import openai
import orjson
import pytest
import redis
from redis.cluster import RedisCluster as SyncCluster

from proxy.policy import Sighting
from proxy.store import (
    Entries,
    Entry,
    Events,
    Lifecycle,
    Markers,
    Note,
    Sightings,
    Store,
    StoreError,
    Tallies,
    open_store,
)
from proxy.store import redis as redis_store
from proxy.store.disk import DiskStore
from proxy.store.memory import MemoryStore
from proxy.store.redis import CLUSTER_META, PREFIX, RedisStore
from proxy.traffic import Traffic
from tests.conftest import sdk
from tests.harness import FAKE_KEY, free_port, http, proxy_settings, stored_bytes
from tests.rediscluster import Cluster

pytestmark = pytest.mark.every_store

REDIS = pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
CLUSTER = pytest.mark.parametrize("backend", ["cluster"], indirect=True)
CHAT = "/v1/chat/completions"


def entry(key: str, fp: str | None, created: float, body: bytes = b"{}") -> Entry:
    return Entry(key, fp, created, 200, "application/json", CHAT, "m", 1, 2, 3, body, b"{}")


def note(key: str, fp: str | None, now: float, see: bool = True, model: str = "m") -> Note:
    return Note(key, CHAT, model, fp, now, see)


def public_coroutines(cls: type) -> dict[str, Any]:
    return {
        name: fn
        for name, fn in inspect.getmembers(cls, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }


PARTS = (Entries, Sightings, Events, Tallies, Markers, Lifecycle)  # every backend offers each
BACKENDS = ("disk", "redis", "cluster", "memory")
CLASSES: dict[str, type] = {"disk": DiskStore, "redis": RedisStore, "memory": MemoryStore}


def methods(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_the_parts_cover_the_store_once_each():
    every = [name for part in PARTS for name in methods(part)]
    assert len(every) == len(set(every)) == 21
    assert set(every) == {
        name
        for name, _ in inspect.getmembers(Store, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_backend_implements_exactly_the_protocol(name: str):
    assert set(public_coroutines(CLASSES[name])) == set().union(*map(methods, PARTS))


async def opened(backend: str, request: pytest.FixtureRequest, traffic: Traffic) -> Store:
    if backend == "memory":
        return MemoryStore()
    config = request.getfixturevalue("store_config")
    url = request.getfixturevalue("upstream").url
    cache_dir = request.getfixturevalue("cache_dir")
    return open_store(proxy_settings(cache_dir, url, cache=config), traffic)


async def entries_part(store: Store, traffic: Traffic) -> None:
    """One entry per (key, fingerprint), newest first, at most eight per key."""
    await store.put(entry("k1", "fp_a", 1.0, b'{"a":1}'))
    await store.put(entry("k1", "fp_b", 2.0))
    await store.put(entry("k1", "fp_a", 3.0, b'{"a":2}'))  # replaces fp_a
    await store.put(entry("k1", None, 4.0))
    variants = await store.variants("k1")
    assert [(v.fingerprint, v.created) for v in variants] == [
        (None, 4.0),
        ("fp_a", 3.0),
        ("fp_b", 2.0),
    ]
    assert variants[1] == entry("k1", "fp_a", 3.0, b'{"a":2}')
    for i in range(12):
        traffic.live = 2 if i % 2 == 0 else 0  # busy or not: disk writes from a thread or the loop
        await store.put(entry("k2", f"fp{i}", float(i)))
    assert [v.fingerprint for v in await store.variants("k2")] == [
        f"fp{i}" for i in range(11, 3, -1)
    ]
    assert await store.variants("absent") == []
    for i in range(30):  # keys spread over every master of a cluster
        await store.put(entry(f"s{i}", "fp", 1.0))
    assert sorted(await store.keys()) == sorted(["k1", "k2", *(f"s{i}" for i in range(30))])
    entries, volume = await store.size()
    assert entries == 32 and volume > 0  # keys, not their 41 variants
    assert await store.delete("k1", {"fp_b", "never"}) == 1
    assert len(await store.variants("k1")) == 2
    assert await store.delete("k1") == 2
    assert await store.variants("k1") == []
    assert await store.delete("k1") == 0


async def sightings_part(store: Store, traffic: Traffic) -> None:
    """Recent keys and the fingerprint registry, applied in order."""
    await store.put(entry("k0", "fp_a", 1.0))
    assert await store.recent(CHAT, "m") == []  # a key is indexed by its note, not its put
    notes = [note(k, "fp_a", 3.0, False) for k in ("k1", "k2", "k3", "k1")]
    assert await store.note(notes) == [None] * 4
    assert (await store.recent(CHAT, "m"))[:3] == ["k1", "k3", "k2"]
    assert await store.recent(CHAT, "other") == []
    first = await store.note(
        [note("k9", "fp_a", 10.0), note("k9", None, 11.0), note("k9", "x", 11.0, model="n")]
    )
    second = await store.note([note("k9", "fp_a", 12.0)])
    assert [(s.previous, s.is_new) for s in (*first, *second)] == [
        (None, False),
        ("fp_a", True),
        (None, False),
        (None, False),
    ]
    assert second[0].sightings == await store.sightings("m")
    assert (await store.sightings("m"))["fp_a"] == Sighting("fp_a", 10.0, 12.0, 2)
    assert (await store.sightings("m"))[None] == Sighting(None, 11.0, 11.0, 1)
    assert await store.note([note("k9", "fp_z", 13.0, see=False)]) == [None]
    assert "fp_z" not in await store.sightings("m")
    assert await store.sightings("unseen") == {}
    assert await store.models() == ["m", "n"]


async def events_part(store: Store, traffic: Traffic) -> None:
    """Events newest first, by kind, a page at a time."""
    for i in range(3):
        await store.add_event({"kind": "drift", "id": str(i)})
    await store.add_event({"kind": "fingerprint_change", "id": "f"})
    assert [e["id"] for e in await store.events("drift", 2)] == ["2", "1"]
    assert [e["id"] for e in await store.events("drift", 2, 2)] == ["0"]
    assert [e["id"] for e in await store.events("fingerprint_change")] == ["f"]


async def tallies_part(store: Store, traffic: Traffic) -> None:
    """Counters add up."""
    assert await store.counters() == {}
    await store.add_counters({"hits": 2, "misses": 1})
    await store.add_counters({"hits": 3})
    assert await store.counters() == {"hits": 5, "misses": 1}


async def markers_part(store: Store, traffic: Traffic) -> None:
    """The in-flight marker: one holder, extended by it alone, gone when it expires."""
    assert await store.lock("k", "me", 0.3)
    assert not await store.lock("k", "other", 5)
    assert await store.locked("k")
    assert await store.extend("k", "me", 0.3)
    assert not await store.extend("k", "other", 5)
    await asyncio.sleep(0.5)  # expired: a crashed holder's marker goes away
    assert not await store.locked("k")
    assert not await store.extend("k", "me", 5)
    assert await store.lock("k", "other", 5)
    await store.unlock("k", "me")  # not ours any more: nothing happens
    assert await store.locked("k")
    await store.unlock("k", "other")
    assert not await store.locked("k")


async def lifecycle_part(store: Store, traffic: Traffic) -> None:
    """Answers pings; housekeeping keeps what is stored."""
    await store.ping()
    for i in range(12):
        await store.put(entry("k2", f"fp{i}", float(i)))
    await store.checkpoint()
    assert len(await store.variants("k2")) == 8


CHECKS = {
    Entries: entries_part,
    Sightings: sightings_part,
    Events: events_part,
    Tallies: tallies_part,
    Markers: markers_part,
    Lifecycle: lifecycle_part,
}


@pytest.mark.parametrize(
    ("backend", "part"),
    [
        pytest.param(backend, part, id=f"{backend}-{part.__name__}")
        for backend in BACKENDS
        for part in PARTS
    ],
    indirect=["backend"],
)
async def test_store_contract(backend: str, part: type, request: pytest.FixtureRequest) -> None:
    traffic = Traffic()
    store = await opened(backend, request, traffic)
    await store.start()
    try:
        await CHECKS[part](store, traffic)
    finally:
        await store.close()


async def test_the_disk_store_reads_recent_keys_on_the_loop_and_in_the_pool_when_locked(
    tmp_path, monkeypatch
):
    """A replay miss's recent keys: read on the event loop's never-waiting connection, no
    hop to the pool (a third of an unknown model's replay miss); in the pool when that
    connection would have to wait."""
    store = DiskStore(tmp_path / "c")
    try:
        await store.note([note("k1", "fp", 1.0), note("k2", "fp", 2.0)])
        pooled: list[Any] = []
        run = store._run

        async def counted(fn: Any, *args: Any) -> Any:
            pooled.append(fn)
            return await run(fn, *args)

        monkeypatch.setattr(store, "_run", counted)
        assert await store.recent(CHAT, "m") == ["k2", "k1"]
        assert pooled == []

        def locked(*args: Any, **kwargs: Any) -> Any:
            raise diskcache.Timeout

        monkeypatch.setattr(store._meta_now, "get", locked)
        assert await store.recent(CHAT, "m") == ["k2", "k1"]
        assert len(pooled) == 1
    finally:
        await store.close()


# -- Redis failures ------------------------------------------------------------------------

SAMPLES: dict[str, Any] = {
    "key": "k",
    "entry": entry("k", "fp", 1.0),
    "model": "m",
    "notes": [note("k", "fp", 1.0)],
    "event": {"kind": "drift"},
    "kind": "drift",
    "deltas": {"hits": 1},
    "token": "t",
    "ttl": 1.0,
    "endpoint": CHAT,
}
NO_IO = {"checkpoint", "close"}  # nothing to fail: Redis persists by itself; closing is local


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "cluster"])
async def test_every_redis_method_fails_as_a_store_error_without_the_password(cluster):
    """Each public coroutine of RedisStore, against a server that is not there: a new method
    that forgot ``with self._errors():`` fails here."""
    store = RedisStore(f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0", cluster=cluster)
    try:
        for name, method in public_coroutines(RedisStore).items():
            if name in NO_IO:
                continue
            params = list(inspect.signature(method).parameters.values())[1:]
            missing = [p.name for p in params if p.default is p.empty and p.name not in SAMPLES]
            assert not missing, f"add a sample argument for RedisStore.{name}: {missing}"
            args = {p.name: SAMPLES[p.name] for p in params if p.name in SAMPLES}
            with pytest.raises(StoreError) as err:
                await getattr(store, name)(**args)
            assert "hunter2" not in str(err.value), name
            assert "//***@127.0.0.1" in str(err.value), name
    finally:
        await store.close()


async def test_a_store_that_hangs_or_went_away_fails_and_comes_back(tmp_path, monkeypatch):
    """A Redis server frozen (SIGSTOP), then stopped and started again on the same port: a
    StoreError meanwhile, not a wait without end; then the same store object works again."""
    # each of the three tries waits this long for the frozen server (3 s in production)
    monkeypatch.setattr(redis_store, "COMMAND_TIMEOUT", 1.0)
    port = free_port()
    server = _ServerOnPort(port, tmp_path)
    store = RedisStore(f"redis://127.0.0.1:{port}/0")
    try:
        await store.start()
        await store.put(entry("k", "fp", 1.0))
        server.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(StoreError):  # the bound only stops a hang from hanging the test
                await asyncio.wait_for(store.variants("k"), 60)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()
        with pytest.raises(StoreError):
            await store.variants("k")
        server.start()
        await store.put(entry("k", "fp", 2.0))
        assert [e.created for e in await store.variants("k")] == [2.0]
    finally:
        await store.close()
        server.stop()


class _ServerOnPort:
    """One redis-server that can be stopped and started again on the same port."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory = port, directory
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with redis.Redis(port=self.port) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    assert time.monotonic() < deadline and self.proc.poll() is None
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


async def test_the_wrong_kind_of_server_stops_the_proxy_with_one_line(redis_server, redis_cluster):
    with pytest.raises(StoreError, match=r"is a Redis Cluster node; set cache\.redis_cluster"):
        single = RedisStore(redis_cluster.url)
        try:
            await single.start()
        finally:
            await single.close()
    clustered = RedisStore(redis_server, cluster=True)
    try:
        with pytest.raises(StoreError, match=r"cache\.redis_url: cannot reach"):
            await clustered.start()
    finally:
        await clustered.close()
    with pytest.raises(StoreError, match=r"cache\.redis_url: .*'db' must be 0"):
        RedisStore(redis_cluster.url.replace("/0", "/1"), cluster=True)


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_one_redis_keeps_the_key_names_earlier_versions_wrote(store_config):
    store = RedisStore(store_config["redis_url"])
    try:
        await store.put(entry("k", "fp", 1.0))
        await store.note([note("k", "fp", 1.0)])
        await store.add_event({"kind": "drift"})
        await store.add_counters({"hits": 1})
    finally:
        await store.close()
    with redis.Redis.from_url(store_config["redis_url"]) as client:
        assert sorted(k.decode() for k in client.scan_iter()) == [
            PREFIX + name
            for name in ("counters", "e:k", "events:drift", "fp:m", "models", f"recent:{CHAT}:m")
        ]


# -- what a cluster adds -------------------------------------------------------------------


@CLUSTER
async def test_entries_spread_over_every_master_and_meta_keys_share_one_slot(
    store_config, cache_dir, upstream, redis_cluster
):
    config = store_config | {"redis_entry_ttl": 3600, "redis_maxmemory": 256 * 1024**2}
    store = open_store(proxy_settings(cache_dir, upstream.url, cache=config))
    client = SyncCluster.from_url(redis_cluster.url)
    before = client.config_get("maxmemory*", target_nodes=SyncCluster.ALL_NODES)
    try:
        await store.start()
        for i in range(30):
            await store.put(entry(f"k{i}", "fp", 1.0))
            await store.lock(f"k{i}", "t", 60)
        await store.note([note(f"k{i}", "fp", 1.0) for i in range(30)])
        await store.add_event({"kind": "drift", "id": "1"})
        await store.add_counters({"hits": 1})
        for port in redis_cluster.masters():  # each holds its share of the entries
            with redis.Redis(port=port) as master:
                assert len(list(master.scan_iter(match=PREFIX + "e:*"))) >= 5
        meta = [k for k in client.scan_iter(match=CLUSTER_META + "*")]
        assert len(meta) == 5  # fp, models, recent, events, counters
        assert len({client.keyslot(k) for k in meta}) == 1
        assert len({client.keyslot(k) for k in client.scan_iter(match=PREFIX + "e:*")}) == 30
        assert 3500 < client.ttl(PREFIX + "e:k0") <= 3600
        settings = client.config_get("maxmemory*", target_nodes=SyncCluster.ALL_NODES)
        assert len(settings) == 6  # replicas too: one may become a master
        for node in settings.values():
            assert node["maxmemory"] == str(256 * 1024**2)
            assert node["maxmemory-policy"] == "volatile-lru"
    finally:
        await store.close()
        for name in ("maxmemory", "maxmemory-policy"):
            value = next(iter(before.values()))[name]
            client.config_set(name, value, target_nodes=SyncCluster.ALL_NODES)
        client.close()


MESSAGES = [{"role": "user", "content": "Cluster question"}]


def create(client: openai.OpenAI, **extra: Any) -> str:
    return client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, **extra
    ).headers["x-cache"]


@CLUSTER
def test_a_proxy_on_a_cluster_serves_namespaces_scopes_and_stats(
    make_proxy, upstream, redis_cluster
):
    proxy = make_proxy(cache={"scope": "per-key"})
    a = {"extra_headers": {"X-Seedproxy-Namespace": "team-a"}}
    with (
        openai.OpenAI(base_url=proxy.base_url, api_key="sk-alice-0") as alice,
        openai.OpenAI(base_url=proxy.base_url, api_key="sk-bob-0") as bob,
    ):
        assert [create(alice), create(bob), create(alice, **a)] == ["MISS"] * 3
        assert [create(alice), create(bob), create(alice, **a)] == ["HIT"] * 3
    assert len(upstream.chat_calls) == 3
    with sdk(proxy) as client:
        upstream.fingerprint = "fp_new"  # a refresh that drifts: an event in the store
        upstream.nondeterministic = True
        create(client, extra_headers={"Cache-Control": "no-cache"})
        create(client, extra_headers={"Cache-Control": "no-cache"})
    stats = orjson.loads(http(proxy.url, "GET", "/_seedproxy/stats")[2])
    assert stats["hits"] == 3 and stats["entries"] == 4
    # kept, read back; per-key scope: by the credential that made them
    mine = {"Authorization": f"Bearer {FAKE_KEY}"}
    events = orjson.loads(http(proxy.url, "GET", "/_seedproxy/drift", headers=mine)[2])
    assert events["drift"] and {e["model"] for e in events["drift"]} == {"gpt-test"}
    assert len(events["fingerprint_changes"]) == 1
    held = b"".join(  # every master's keys and values: no credential anywhere
        b"".join(stored_bytes({"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}"}))
        for port in redis_cluster.masters()
    )
    assert b"e:" in held
    assert not any(secret in held for secret in (b"sk-alice-0", b"sk-bob-0", FAKE_KEY.encode()))


@CLUSTER
def test_a_master_killed_under_traffic(make_proxy, upstream, redis_cluster: Cluster):
    """SIGKILL one master while requests flow: never a 500; once its replica has taken
    over, hits resume by themselves, with no restart of the proxy."""
    proxy = make_proxy()
    prompts = [
        orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": f"q{i}"}]})
        for i in range(30)
    ]

    def ask(body: bytes) -> tuple[int, str]:
        status, headers, _ = http(
            proxy.url,
            "POST",
            "/v1/chat/completions",
            body=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {FAKE_KEY}"},
        )
        return status, headers.get("X-Cache", "")

    assert {ask(p) for p in prompts} == {(200, "MISS")}
    assert {ask(p) for p in prompts} == {(200, "HIT")}
    redis_cluster.wait_replicated()  # what the master stored, its replica holds too
    victim = redis_cluster.master_of(PREFIX + "e:" + proxy_key(proxy, prompts[0]))
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for body in prompts:
                answers.append(ask(body))

    flowing = threading.Thread(target=traffic)
    flowing.start()
    try:
        while len(answers) < 30:  # traffic before the kill
            time.sleep(0.01)
        redis_cluster.kill(victim)
        redis_cluster.wait_failed_over()
        seen = len(answers)
        while len(answers) < seen + 60:  # and after the failover
            time.sleep(0.01)
    finally:
        stop.set()
        flowing.join(60)
        redis_cluster.start_node(victim)  # it comes back as a replica
        redis_cluster.wait_healthy()
    assert all(status != 500 for status, _ in answers)
    assert any(cache == "MISS" for _, cache in answers)  # it was felt
    # a request whose slot has no master yet goes live in record mode: every answer is 200
    assert {status for status, _ in answers} == {200}
    deadline = time.monotonic() + 60
    while {ask(p) for p in prompts} != {(200, "HIT")}:  # every entry served again
        assert time.monotonic() < deadline, "hits did not resume after the failover"
        time.sleep(0.2)


def proxy_key(proxy: Any, body: bytes) -> str:
    status, headers, _ = http(
        proxy.url,
        "POST",
        "/v1/chat/completions",
        body=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {FAKE_KEY}"},
    )
    assert status == 200
    return headers["X-Seedproxy-Key"]


def test_the_redis_and_memory_backends_load_neither_diskcache_nor_sqlite3():
    """The limits every backend keeps live apart from the disk store (store/limits.py)."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, proxy.store.redis, proxy.store.memory; "
            "print(sorted({'diskcache', 'sqlite3'} & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert loaded.strip() == "[]"
