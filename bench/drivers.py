"""The benchmark's load drivers other than wrk: bench/sdkload.py (requests like the async
openai SDK's, in its own process) run target by target, taking turns, and raw sockets for
the time to a streamed miss's first event; and :func:`each`, which runs a group of runs one
after another or, in the smoke run, all at once."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

SDKLOAD = Path(__file__).resolve().parent / "sdkload.py"
T = TypeVar("T")


def each(jobs: Sequence[Callable[[], T]], at_once: bool = False) -> list[T]:
    """The jobs' results, in order. Run one after another, so that no run disturbs
    another's figures; or, ``at_once``, all together in threads: the smoke run, which only
    keeps the script working, so its figures mean nothing and only its time counts (wrk
    runs whole seconds, each process starts Python)."""
    if not at_once or len(jobs) < 2:
        return [job() for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result() for future in futures]


def in_turns(names: list[str], turns: int) -> Iterator[tuple[int, str]]:
    """(turn, name): each name once per turn, the order reversed every other turn, so
    every target sees the machine in the same states."""
    for turn in range(turns):
        for name in names if turn % 2 == 0 else names[::-1]:
            yield turn, name


def each_in_turns(
    names: list[str], turns: int, run: Callable[[int, str], T], at_once: bool = False
) -> list[tuple[str, T]]:
    """``run(turn, name)`` for each name once per turn, in :func:`in_turns` order, through
    :func:`each`: (name, result) pairs in that order."""
    order = list(in_turns(names, turns))
    results = each([functools.partial(run, turn, name) for turn, name in order], at_once)
    return [(name, result) for (_, name), result in zip(order, results, strict=True)]


def sdk(
    port: int,
    concurrency: int,
    requests: int,
    run: str = "0",
    headers: dict[str, str] | None = None,
    hit: bool = False,
    stream: bool = False,
    first_byte: bool = False,
) -> dict:
    """One run of bench/sdkload.py against ``port``: its JSON line."""
    command = [
        sys.executable,
        str(SDKLOAD),
        *("--port", str(port)),
        *("--concurrency", str(concurrency)),
        *("--requests", str(requests)),
        *("--run", run),
    ]
    for name, value in (headers or {}).items():
        command += ["--header", f"{name}:{value}"]
    command += [
        flag
        for flag, on in (("--hit", hit), ("--stream", stream), ("--first-byte", first_byte))
        if on
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def quantile(values: list[int], fraction: float) -> float:
    """The nearest-rank quantile of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def sdk_taking_turns(
    targets: dict[str, int],
    concurrency: int,
    requests: int,
    turns: int,
    headers: dict[str, dict[str, str]] | None = None,
    options: dict[str, dict[str, bool]] | None = None,
    at_once: bool = False,
    **common: bool,
) -> dict[str, dict[str, float]]:
    """Latency of each target over ``requests`` requests split into ``turns`` runs that take
    turns (the order reversed every other round), like run.py's ``taking_turns`` for wrk;
    percentiles of the pooled samples. ``headers``: extra headers per target name;
    ``common`` and ``options`` (per target name): hit, stream, first_byte for :func:`sdk`;
    ``at_once``: see :func:`each`."""
    turns = max(1, turns)
    per_turn = math.ceil(requests / turns)
    samples: dict[str, list[int]] = {name: [] for name in targets}
    errors = dict.fromkeys(targets, 0)

    def one(turn: int, name: str) -> dict[str, Any]:  # sdk's JSON line
        return sdk(
            targets[name],
            concurrency,
            per_turn,
            run=f"sdk-{name}{concurrency}-{turn}",
            headers=(headers or {}).get(name),
            **(common | (options or {}).get(name, {})),
        )

    for name, result in each_in_turns(list(targets), turns, one, at_once):
        samples[name] += result["latencies_us"]
        errors[name] += result["errors"]
    return {
        name: {
            "p50_us": quantile(values, 0.5),
            "p99_us": quantile(values, 0.99),
            "requests": len(values),
            "errors": errors[name],
        }
        for name, values in samples.items()
    }


async def first_chunk_ms(port: int, tag: str) -> float:
    """Time to the first streamed event of a miss (raw sockets: nothing in between)."""
    body = json.dumps(
        {
            "model": "gpt-bench",
            "stream": True,
            "messages": [{"role": "user", "content": f"ttfc {tag} {time.time_ns()}"}],
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
        f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(head.encode() + body)
    data = b""
    while b"data:" not in data:
        chunk = await reader.read(65536)
        if not chunk:
            break
        data += chunk
    elapsed = time.perf_counter() - started
    await reader.read()  # the rest, to the close
    writer.close()
    return elapsed * 1000


async def first_chunks_ms(targets: dict[str, int], n: int) -> dict[str, float]:
    """Median time to the first event per target, the targets taking turns request by request
    (the first round only warms up)."""
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for i in range(n + 1):
        for name, port in targets.items():
            took = await first_chunk_ms(port, f"{name} {i}")
            if i:
                samples[name].append(took)
    return {name: statistics.median(values) for name, values in samples.items()}
