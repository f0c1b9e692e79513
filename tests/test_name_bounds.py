"""Bounded memory and disk per distinct name (issue 18 item 9): over-long model names are
refused before anything is stored, and the meta store stays bounded however many
distinct models clients name."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis

from proxy.call import MAX_MODEL_NAME
from proxy.store import Entry, Note, diskmeta, memory
from proxy.store.disk import DiskStore
from proxy.store.redis import META_TTL, RedisStore
from tests.harness import http, stored_bytes

pytestmark = pytest.mark.every_store

CHAT = "/v1/chat/completions"


def chat(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_a_4_mib_model_name_is_refused_and_stores_nothing(make_proxy, upstream, store_config):
    proxy = make_proxy()
    huge = "m" * (4 * 1024**2)
    status, _, body = http(
        proxy.url, "POST", CHAT, chat(huge), {"Content-Type": "application/json"}
    )
    assert status == 400
    error = orjson.loads(body)["error"]
    assert (error["code"], error["param"]) == ("invalid_model", "model")
    assert str(MAX_MODEL_NAME) in error["message"] and huge not in error["message"]
    assert upstream.calls == []
    proxy.bg.run(proxy.pipeline.flush())  # whatever the flow would note, noted now
    assert not any(huge[:1000].encode() in blob for blob in stored_bytes(store_config))


def test_a_model_name_at_the_limit_is_served(make_proxy, upstream):
    proxy = make_proxy()
    status, _, _ = http(
        proxy.url, "POST", CHAT, chat("m" * MAX_MODEL_NAME), {"Content-Type": "application/json"}
    )
    assert status == 200 and len(upstream.calls) == 1


def notes(count: int) -> list[Note]:
    return [
        Note(f"key{i}", endpoint, f"model-{i}", "fp_1", float(i), True)
        for i in range(count)
        for endpoint in (CHAT, "/v1/embeddings")
    ]


def test_many_distinct_models_keep_the_disk_meta_store_bounded(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(diskmeta, "MAX_MODELS", 5)

    async def run() -> tuple[list[str], list[str], list[str]]:
        store = DiskStore(tmp_path / "c")
        try:
            for i in range(0, 40, 8):  # in batches, as the flusher notes them
                await store.note(notes(40)[i * 2 : (i + 8) * 2])
            meta = store._meta.cache
            keys = [k for k in meta.iterkeys() if isinstance(k, str)]
            return (
                [k for k in keys if k.startswith("fp:")],
                [k for k in keys if k.startswith("recent:")],
                await store.models(),
            )
        finally:
            await store.close()

    registry, recent, models = asyncio.run(run())
    kept = [f"model-{i}" for i in range(35, 40)]  # the most recently noted
    assert sorted(registry) == [f"fp:{m}" for m in kept]
    assert len(recent) == 2 * 5 and all(k.endswith(tuple(kept)) for k in recent)
    assert models == kept


def test_many_distinct_models_keep_the_memory_store_bounded(monkeypatch):
    """As on disk: the registry and recent keys of the least recently noted models go,
    whether noted live or indexed from a loaded cassette."""
    monkeypatch.setattr(memory, "MAX_MODELS", 5)
    store = memory.MemoryStore()
    for i in range(0, 40, 8):
        asyncio.run(store.note(notes(40)[i * 2 : (i + 8) * 2]))
    kept = [f"model-{i}" for i in range(35, 40)]
    assert asyncio.run(store.models()) == kept
    assert sorted(store._recent) == sorted((e, m) for m in kept for e in (CHAT, "/v1/embeddings"))
    assert asyncio.run(store.recent(CHAT, "model-34")) == []
    assert asyncio.run(store.recent(CHAT, "model-39")) == ["key39"]
    store.replace(
        Entry(
            f"k{i}",
            None,
            1.0,
            200,
            "application/json",
            CHAT,
            f"cassette-{i}",
            1,
            2,
            3,
            b"{}",
            b"{}",
        )
        for i in range(1_000)
    )
    assert len(store._models) == len(store._recent) == 5
    assert asyncio.run(store.models()) == []  # no fingerprint seen for a loaded one
    assert asyncio.run(store.recent(CHAT, "cassette-999")) == ["k999"]


def test_many_more_distinct_models_than_its_bound_keep_the_memory_store_within_it():
    store = memory.MemoryStore()
    batch = 10_000
    for start in range(0, 100 * memory.MAX_MODELS, batch):
        asyncio.run(
            store.note(
                [Note(f"k{i}", CHAT, f"m{i}", "fp", 1.0, True) for i in range(start, start + batch)]
            )
        )
    assert len(store._models) == len(store._sightings) == len(store._recent) == memory.MAX_MODELS
    assert asyncio.run(store.recent(CHAT, "m99999")) == ["k99999"]


def test_redis_meta_keys_expire_so_they_can_be_evicted(redis_server):
    async def run() -> None:
        store = RedisStore(redis_server)
        await store.start()
        try:
            await store.note(notes(3))
        finally:
            await store.close()

    with redis.Redis.from_url(redis_server) as client:
        client.flushdb()
        asyncio.run(run())
        meta = [k for k in client.scan_iter("seedproxy:*") if b":lock:" not in k]
        assert len(meta) == 3 + 6 + 1  # fp per model, recent per (endpoint, model), models
        for key in meta:
            assert 0 < client.ttl(key) <= META_TTL, key
