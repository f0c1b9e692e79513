"""The benchmark keeps working: a smoke run with tiny sizes. Nothing here asserts on timing."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_smoke_run_prints_its_table():
    assert shutil.which("wrk"), "wrk is missing: the test command installs Debian's wrk"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout
    for metric in ("hit throughput, 1 process, c=64", "hit throughput, --workers 2, c=64",
                   "added latency on misses, c=1", "added latency on misses, c=16",
                   "stream first-chunk added on misses", "hit latency, 30 KB answer, c=1",
                   "hit latency with 300 entries, c=1", "RSS with 300 entries", "peak RSS"):
        assert metric in table, metric
    assert "req/s" in table and "ms" in table
