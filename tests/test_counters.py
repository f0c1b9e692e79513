"""Counters flushed to the store: a report that flushes first sees every request counted."""

from __future__ import annotations

import asyncio

import pytest

from proxy.observe import Counters

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
