"""The one bounded map type (issue 29, item 4) and the maps built on it."""

from __future__ import annotations

import asyncio

import pytest

from proxy import registry as registry_module
from proxy.health import StoreHealth
from proxy.lru import Lru
from proxy.observe import Counters
from proxy.registry import Registry
from proxy.repeats import Occurrences
from proxy.store import Note
from proxy.store.memory import MemoryStore


def test_an_lru_needs_a_bound():
    with pytest.raises(ValueError):
        Lru()


def test_entries_bound_forgets_the_least_recently_used():
    lru: Lru[str, int] = Lru(entries=2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "b" is now the least recently used
    lru.put("c", 3)
    assert "b" not in lru and list(lru) == ["a", "c"]
    lru.put("a", 10)  # replaced, not added
    assert len(lru) == 2 and lru.get("a") == 10 and lru.held == 2


def test_size_bound_counts_replacements_and_pops_once():
    lru: Lru[str, bytes] = Lru(10, 6, lambda k, v: len(v))
    lru.put("a", b"xxxx")
    lru.put("a", b"xxxxx")
    assert lru.held == 5
    lru.put("big", b"x" * 7)  # larger than `largest`: never kept
    assert "big" not in lru and lru.held == 5
    lru.put("b", b"xxxxxx")  # 11 > 10: "a" goes
    assert list(lru) == ["b"] and lru.held == 6
    assert lru.pop("b") == b"xxxxxx" and lru.pop("b") is None and lru.held == 0


def test_repeat_counts_are_bounded():
    seen = Occurrences(sequence=True, limit=3)
    assert [seen.next(k) for k in "aab"] == [0, 1, 0]
    for k in "cde":
        seen.next(k)
    assert seen.next("a") == 0  # forgotten: counts from the first answer again
    assert len(seen._counts) == 3


def test_the_registry_keeps_a_bounded_number_of_models(monkeypatch):
    monkeypatch.setattr(registry_module, "MODELS", 50)
    store = MemoryStore()
    registry = Registry(store, Counters(), StoreHealth())

    async def run() -> None:
        for i in range(1_000):  # model names are the clients' to choose
            registry.note(Note(f"k{i}", "/v1/chat/completions", f"model-{i}", "fp", 1.0, True))
        await registry.flush()
        for i in range(1_000, 1_200):
            await registry.sightings(f"model-{i}", 2.0)
        # the most recent model is still known without the store
        assert (await registry.sightings("model-999", 2.0))["fp"].count == 1

    asyncio.run(run())
    assert len(registry._memo) == 50
