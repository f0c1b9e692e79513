"""Counters flushed to the store: a report that flushes first sees every request counted."""

from __future__ import annotations

import asyncio

import pytest

from proxy.determinism import counts
from proxy.observe import MODEL_LABELS, OTHER, Counters

CHAT = "/v1/chat/completions"

pytestmark = pytest.mark.every_store


async def test_a_flush_waits_for_the_one_already_writing():
    """The once-a-second flush may be mid-write when /_seedproxy/stats or the dashboard
    flushes; the report's flush must not return (and the report read the store) first."""
    counters, stored, landed = Counters(), {"hits": 0}, asyncio.Event()

    async def slow_write(counts: dict[str, int]) -> None:
        await landed.wait()
        stored["hits"] += counts["hits"]

    async def write(counts: dict[str, int]) -> None:
        stored["hits"] += counts.get("hits", 0)

    counters.add("hits")
    background = asyncio.create_task(counters.flush(slow_write))
    await asyncio.sleep(0)  # the background flush has taken the counts and is writing
    report = asyncio.create_task(counters.flush(write))
    await asyncio.sleep(0.05)
    assert not report.done()
    landed.set()
    await report
    assert stored["hits"] == 1
    await background


async def test_a_failed_flush_keeps_its_counts_for_the_next():
    counters, stored = Counters(), {}

    async def failing(counts: dict[str, int]) -> None:
        raise OSError("store down")

    async def write(counts: dict[str, int]) -> None:
        stored.update(counts)

    counters.add("hits", 3)
    with pytest.raises(OSError):
        await counters.flush(failing)
    counters.add("misses")
    assert counters.total == {"hits": 3, "misses": 1}
    await counters.flush(write)
    assert stored == {"hits": 3, "misses": 1} and not counters.pending
    assert counters.total == {"hits": 3, "misses": 1}


async def test_a_cancelled_flush_does_not_count_twice():
    """Cancelled at shutdown while its write runs in a thread that may still land: the
    counts are not put back, so the last flush does not write them a second time."""
    counters, writing = Counters(), asyncio.Event()

    async def hanging(counts: dict[str, int]) -> None:
        writing.set()
        await asyncio.Event().wait()

    counters.add("hits", 2)
    flush = asyncio.create_task(counters.flush(hanging))
    await writing.wait()
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    assert not counters.pending and counters.total == {"hits": 2}


async def test_what_a_process_keeps_of_flushed_counts_is_bounded():
    """Per model and per hour names are the store's: a process keeps its plain counters
    and the comparison samples, by at most MODEL_LABELS model labels."""
    counters = Counters()

    async def write(counts: dict[str, int]) -> None:
        pass

    for i in range(MODEL_LABELS + 400):
        counters.add("hits")
        counters.add(f"saved_prompt:model-{i}", 3)
        for name, n in counts(3600.0 * i, CHAT, f"model-{i}", "fp", "fp", 0.5).items():
            counters.add(name, n)
        await counters.flush(write)
    assert counters.total == {"hits": MODEL_LABELS + 400}
    samples = counters.comparisons()
    assert len({model for model, _, _ in samples}) == MODEL_LABELS + 1
    assert samples["model-0", "fp", "differed"] == 1
    assert samples[OTHER, "fp", "differed"] == 400


async def test_comparison_samples_go_back_with_a_failed_flush():
    counters = Counters()

    async def failing(counts: dict[str, int]) -> None:
        raise OSError("store down")

    for name, n in counts(0.0, CHAT, "m", "fp", "fp", None).items():
        counters.add(name, n)
    with pytest.raises(OSError):
        await counters.flush(failing)
    assert counters.comparisons() == {("m", "fp", "identical"): 1}  # pending, not twice
