"""The store work behind export, import and purge, without click, on the in-memory store
(the store contract test covers the backends; these are the operations' own rules)."""

from __future__ import annotations

import asyncio
import dataclasses

from proxy import cassette, storeops
from proxy.store.memory import MemoryStore
from tests.test_cassette import SETTINGS, entry


def test_export_then_import_round_trips_and_a_second_import_changes_nothing():
    async def go() -> None:
        source = MemoryStore()
        first = entry()
        later = dataclasses.replace(entry(temperature=0.5), created=first.created + 60)
        other = dataclasses.replace(entry(temperature=0.9), model="gpt-other")
        for e in (later, first, other):
            await source.put(e)
        dumped, total = await storeops.exported(source, SETTINGS, "x.json", "gpt-test", None)
        assert (total, dumped.kept, dumped.rekeyed) == (2, 2, 0)
        assert [r.entry for r in cassette.loads(dumped.data, SETTINGS)] == [first, later]
        recent, _ = await storeops.exported(source, SETTINGS, "x.jsonl", None, first.created + 1)
        assert recent.kept == 1 and recent.data.count(b"\n") == 1  # JSON Lines, later only

        target = MemoryStore()
        done = await storeops.imported(target, dumped.data, SETTINGS)
        assert (done.total, done.added, done.replaced, done.there) == (2, 2, 0, 0)
        again = await storeops.imported(target, dumped.data, SETTINGS)
        assert (again.added, again.replaced, again.there) == (0, 0, 2)
        assert await target.variants(first.key) == [first]

    asyncio.run(go())


def test_an_import_replaces_a_changed_answer_under_the_same_fingerprint():
    async def go() -> None:
        store = MemoryStore()
        await store.put(dataclasses.replace(entry(), completion_tokens=99))
        data = cassette.dumps([cassette.interaction(entry(), SETTINGS)])
        done = await storeops.imported(store, data, SETTINGS)
        assert (done.added, done.replaced, done.there) == (0, 1, 0)
        assert await store.variants(entry().key) == [entry()]

    asyncio.run(go())


def test_purge_filters_by_model_fingerprint_and_age_and_null_means_none():
    async def go() -> None:
        store = MemoryStore(max_variants=4)
        old = entry()
        unfingerprinted = dataclasses.replace(old, fingerprint=None, created=old.created + 100)
        other = dataclasses.replace(
            entry(temperature=0.5), model="gpt-other", created=old.created + 200
        )
        for e in (old, unfingerprinted, other):
            await store.put(e)
        assert await storeops.purged(store, "gpt-test", "null", None) == [unfingerprinted]
        assert await storeops.purged(store, None, None, old.created) == []  # none older
        assert await storeops.purged(store, None, "fp_one", old.created + 1) == [old]
        assert await store.variants(old.key) == []
        assert await storeops.purged(store, None, None, None) == [other]
        assert await store.keys() == []

    asyncio.run(go())
