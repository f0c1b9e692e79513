"""Issue 29, item 4: no in-process map grows with what clients send. A real `seedproxy
serve` gets 60,000 distinct model names, 1,000 recorded answers of distinct models (past
the registry memo's bound) and 1,000 distinct 60 KB bodies of ``[{},{},...]`` (which
pinned ~200 MiB when the parse memo counted raw bytes); its resident memory grows by less
than the budget the README documents (RSS_BUDGET), and by less than PER_NAME bytes a name
over the last 40,000 names, sent once the maps they reach are full: a leak of a hundred
bytes a name fails (the budget alone let about 690 through)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest

from tests.harness import Serve, free_port

pytestmark = pytest.mark.load

MIB = 1024 * 1024
RSS_BUDGET = 100 * MIB  # README "Limits and timeouts": growth under distinct traffic (33 measured)
CONNECTIONS = 16
NAMES = 60_000
# The names reach the parse memo (4,096 entries) and the hot records' seen keys (8,192); the
# first FILL of them fill both, and the resident size stays flat after (within 1 MiB over
# 80,000 more).
FILL = 20_000
PER_NAME = 100  # bytes of growth a name, averaged over the names after FILL
RECORDED = 1_000
BODIES = 1_000


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def model_body(i: int) -> bytes:
    return orjson.dumps({"model": f"model-{i}", "messages": [{"role": "user", "content": "hi"}]})


def structure_body(i: int) -> bytes:
    """60 KB that parse into 20,000 dicts, distinct per ``i``."""
    empties = b",".join([b"{}"] * 20_000)
    return b'{"model":"gpt-test","user":"u%d","messages":[%s]}' % (i, empties)


async def send(port: int, bodies: Iterable[bytes], headers: bytes) -> list[int]:
    """Each body POSTed on one of CONNECTIONS keep-alive connections, one after another;
    the statuses."""
    todo = list(bodies)
    statuses: list[int] = []

    async def connection(part: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for body in part:
                writer.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\n%sContent-Length: %d\r\n\r\n"
                    % (headers, len(body))
                    + body
                )
                head = await reader.readuntil(b"\r\n\r\n")
                statuses.append(int(head.split(b" ", 2)[1]))
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
        finally:
            writer.close()

    await asyncio.gather(*(connection(todo[k::CONNECTIONS]) for k in range(CONNECTIONS)))
    return statuses


def test_distinct_names_and_bodies_keep_memory_bounded(upstream, tmp_path):
    upstream.keep_calls = False
    port = free_port()
    served = Serve(port, upstream, {}, "--cache-dir", str(tmp_path / "cache"))
    try:
        cached_only = b"Cache-Control: only-if-cached\r\n"  # no upstream call: the proxy alone
        warm = asyncio.run(send(port, (model_body(-i) for i in range(1, 2_001)), b""))
        assert set(warm) == {200}
        baseline = rss(served.proc.pid)
        # model names: parsed (memo), looked up, explained as replay misses
        statuses = asyncio.run(send(port, (model_body(i) for i in range(FILL)), cached_only))
        filled = rss(served.proc.pid)
        names = (model_body(i) for i in range(FILL, NAMES))
        statuses += asyncio.run(send(port, names, cached_only))
        assert len(statuses) == NAMES and set(statuses) == {504}
        per_name = (rss(served.proc.pid) - filled) / (NAMES - FILL)
        assert per_name < PER_NAME, f"RSS grew {per_name:.0f} bytes a name once full"
        # recorded answers of as many models: the registry memo keeps a bounded number
        statuses = asyncio.run(
            send(port, (model_body(-i) for i in range(3_000, 3_000 + RECORDED)), b"")
        )
        assert set(statuses) == {200}
        # bodies whose parse is 25 times their size
        statuses = asyncio.run(send(port, (structure_body(i) for i in range(BODIES)), cached_only))
        assert len(statuses) == BODIES and set(statuses) == {504}
        grown = rss(served.proc.pid) - baseline
        print(f"RSS grew {grown / MIB:.1f} MiB from {baseline / MIB:.1f}, {per_name:.0f} B a name")
        assert grown < RSS_BUDGET, f"RSS grew {grown / MIB:.0f} MiB"
    finally:
        served.stop()
