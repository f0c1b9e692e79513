"""Two builds of seedproxy side by side in one run: hit throughput and the latency a miss
adds, each figure taken in alternating turns so both builds see the machine alike.

    git worktree add /tmp/base <commit>
    python bench/ab.py /tmp/base [--seconds 5] [--rounds 3]

Prints, per build, hits/s at 64 connections and the added p50 / p99 of misses at c=1
(50 ms upstream, every request a new key), then the ratio of this checkout to the other.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Servers, free_port, taking_turns, warm, wrk


def proxy(servers: Servers, root: Path, upstream: int, name: str) -> int:
    """A one-process seedproxy of the checkout at ``root`` in front of ``upstream``."""
    port = free_port()
    servers.start(
        [
            *(sys.executable, "-m", "proxy", "serve", "--port", str(port)),
            *("--upstream", f"http://127.0.0.1:{upstream}/v1"),
            *("--cache-dir", str(servers.tmp / name)),
        ],
        port,
        env={"PYTHONPATH": str(root)},
        cwd=root,  # `python -m proxy` imports from the working directory first
    )
    return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="a checkout of the build to compare with")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput turn")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    builds = {"this": here, "base": args.base.resolve()}
    servers = Servers()
    try:
        up0, up50 = servers.upstream(0), servers.upstream(50)
        hit = {name: proxy(servers, root, up0, f"{name}-0") for name, root in builds.items()}
        miss = {name: proxy(servers, root, up50, f"{name}-50") for name, root in builds.items()}
        for port in hit.values():
            for _ in range(3):
                warm(port)
        rps: dict[str, list[float]] = {name: [] for name in builds}
        for turn in range(args.rounds):
            for name in builds if turn % 2 == 0 else reversed(builds):
                rps[name].append(wrk(hit[name], 64, args.seconds)["rps"])
        turns = taking_turns(
            {"direct": up50, **miss}, 1, args.seconds * args.rounds, unique=True, turns=6
        )
    finally:
        servers.stop()
    direct = turns["direct"]
    for name in builds:
        added50 = (turns[name]["p50_us"] - direct["p50_us"]) / 1000
        added99 = (turns[name]["p99_us"] - direct["p99_us"]) / 1000
        print(
            f"{name:5} hits {statistics.median(rps[name]):8,.0f} req/s "
            f"(turns {', '.join(f'{r:,.0f}' for r in rps[name])}); "
            f"miss added c=1 p50 {added50:+.2f} ms, p99 {added99:+.2f} ms"
        )
    ratio = statistics.median(rps["this"]) / statistics.median(rps["base"])
    print(f"this / base: hits {ratio:.2f}x")


if __name__ == "__main__":
    main()
