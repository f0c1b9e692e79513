"""The benchmark keeps working: a smoke run with tiny sizes. Nothing here asserts on timing."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_smoke_run_prints_its_table():
    assert shutil.which("wrk"), "wrk is missing: the test command installs Debian's wrk"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout
    assert table.startswith("seedproxy benchmark, smoke mode, ") and "\nmachine: " in table
    for metric in (
        "hit throughput, 1 process, c=64",
        "hit throughput, --workers 2, c=64",
        "added latency on misses, c=1",
        "added latency on misses, c=16",
        "added latency on misses (async SDK client), c=1",
        "added latency on misses (async SDK client), c=16",
        "streamed hit throughput, 1 process, c=64",
        "first byte of a streamed hit, c=1",
        "stream first-chunk added on misses",
        "hit latency, 30 KB answer, c=1",
        "hit latency with 300 entries, c=1",
        "RSS with 300 entries",
        "peak RSS",
        "pytest suite replayed, 20 tests, per test beyond mocked",
    ):
        assert metric in table, metric
    assert "req/s" in table and "ms" in table
    misses = [line for line in table.splitlines() if "added latency on misses" in line]
    floor = r"bare aiohttp proxy [+-]\d+\.\d\d ms / [+-]\d+\.\d\d ms"  # either sign: timing
    assert len(misses) == 4 and all(re.search(floor, line) for line in misses)
    beyond = r"p50 [+-]\d+\.\d\d ms, p99 [+-]\d+\.\d\d ms vs floor"
    assert all(re.search(beyond, line) for line in misses)
    # the peers that install things are measured only when asked for
    assert all("Portkey not measured (--portkey)" in line for line in misses)


def test_latency_percentiles_pool_runs_by_histogram():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    # two runs' [microseconds, count] pairs, unsorted, a value in both
    pooled = [[300, 1], [100, 40], [200, 9], [200, 49], [900, 1]]
    assert bench.percentile(pooled, 0.5) == 200
    assert bench.percentile(pooled, 0.99) == 300
    assert bench.percentile(pooled, 1.0) == 900
    assert bench.percentile([[5, 1]], 0.5) == 5
