"""seedproxy's benchmark: every figure beside its baselines from the same run, with targets.

    python bench/run.py              # the full run (10 to 20 minutes, 1,000,000 entries)
    python bench/run.py --quick      # shorter runs, 100,000 entries
    python bench/run.py --smoke      # every row in seconds, its runs overlapping: keeps the
                                     # script working (the test suite runs it)
    python bench/run.py --litellm    # also LiteLLM's proxy, installed into bench/.venv-litellm
    python bench/run.py --portkey    # also Portkey's gateway (npm), installed into bench/.portkey
    python bench/run.py --peers      # both

It starts the fake upstream (tests/upstream.py) at 0 ms and 50 ms, a constant-body aiohttp
server (bench/ceiling.py), a bare aiohttp caching proxy (bench/floor.py, the floor for
misses), seedproxy (one process and --workers 2) and, when installed, nginx as a
POST-body-keyed proxy_cache in front of the same upstream. Load comes from wrk (Debian's, a
Lua script posting a ~1 KB chat completion) and from bench/sdkload.py (requests like the
async openai SDK's: one aiohttp session, a new prompt per request), each in its own process
on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's proxy package, installed or not
sys.path.insert(0, str(ROOT / "bench"))  # the modules beside this one, run as a script or not

import portkey  # noqa: E402
import suites  # noqa: E402
from drivers import each, each_in_turns, first_chunks_ms, sdk_taking_turns  # noqa: E402

LUA = ROOT / "bench" / "chat.lua"
PROMPT = "benchmark prompt fixed"
LINES_1KB, LINES_30KB = 12, 700  # fake upstream answer sizes


@dataclass
class Mode:
    seconds: float  # per throughput run
    latency_seconds: float  # per latency run
    entries: int  # the large store
    name: str
    sdk_c1: int  # requests per target for the SDK-like driver's misses at c=1
    sdk_c16: int  # and at c=16
    sdk_turns: int  # the runs those take turns in
    first_byte: int  # requests per kind of hit for the time to the first byte
    suite_tests: int  # tests in the generated suite replayed by pytest
    suite_turns: int  # the runs of each way, taking turns
    first_chunks: int  # streamed misses per target for the time to the first chunk
    at_once: bool = False  # the runs of a group all at once: see drivers.each


MODES = {
    "full": Mode(10, 10, 1_000_000, "full", 400, 1600, 5, 200, 300, 5, 60),
    "quick": Mode(5, 6, 100_000, "quick", 200, 800, 4, 100, 300, 3, 60),
    # every row, at the least cost: wrk runs whole seconds, so runs overlap instead
    "smoke": Mode(1, 1, 300, "smoke", 4, 16, 1, 4, 20, 1, 2, at_once=True),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Servers:
    procs: list[subprocess.Popen] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="seedproxy-bench-")))

    def start(
        self,
        args: list[str],
        port: int,
        env: dict[str, str] | None = None,
        health: str = "/healthz",
        cwd: Path = ROOT,
    ) -> subprocess.Popen:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SEEDPROXY_")}
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=base | {"PYTHONPATH": str(ROOT)} | (env or {}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=1).read()
                return proc
            except OSError as exc:
                if getattr(exc, "code", None):  # an HTTP error still means it is up
                    return proc
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"bench: {args[:4]} did not start") from None
                time.sleep(0.05)

    def upstream(self, latency_ms: int, lines: int = LINES_1KB) -> int:
        port = free_port()
        self.start(
            [
                sys.executable,
                "-m",
                "tests.upstream",
                "--port",
                str(port),
                "--latency",
                str(latency_ms / 1000),
                "--content-lines",
                str(lines),
            ],
            port,
        )
        return port

    def ceiling(self) -> int:
        """bench/ceiling.py, a constant-body aiohttp server: its port."""
        port = free_port()
        self.start([sys.executable, str(ROOT / "bench" / "ceiling.py"), str(port)], port)
        return port

    def floor(self, upstream: int) -> int:
        """bench/floor.py in front of ``upstream``, what aiohttp and one diskcache write cost
        any proxy: its port."""
        port = free_port()
        self.start(
            [
                sys.executable,
                str(ROOT / "bench" / "floor.py"),
                str(port),
                f"http://127.0.0.1:{upstream}/v1/chat/completions",
                str(self.tmp / f"floor-{upstream}"),
            ],
            port,
        )
        return port

    def proxy(self, upstream: int, cache: Path, workers: int = 1) -> tuple[int, subprocess.Popen]:
        port = free_port()
        proc = self.start(
            [
                sys.executable,
                "-m",
                "proxy",
                "serve",
                "--port",
                str(port),
                "--upstream",
                f"http://127.0.0.1:{upstream}/v1",
                "--cache-dir",
                str(cache),
                "--workers",
                str(workers),
            ],
            port,
        )
        return port, proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def wrk(
    port: int,
    connections: int,
    seconds: float,
    unique: bool = False,
    run: str = "0",
    keys: int = 0,
    stream: bool = False,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """``unique``: every request a miss; ``keys``: hits spread over that many stored prompts
    (see :func:`fill`); else hits on the benchmark's one prompt. ``stream``: ``"stream":
    true``; ``headers``: added to every request."""
    env = os.environ | {
        "CHAT_UNIQUE": "1" if unique else "0",
        "CHAT_RUN": run,
        "CHAT_KEYS": str(keys),
        "CHAT_STREAM": "1" if stream else "0",
        "CHAT_HEADERS": "\n".join(f"{k}: {v}" for k, v in (headers or {}).items()),
    }
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "-s",
            str(LUA),
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    # successful answers only: an error or a timeout is not a request served
    result["rps"] = (result["requests"] - result["errors"]) / (result["duration_us"] / 1e6)
    return result


def percentile(hist: list[list[int]], fraction: float) -> float:
    """The latency below which ``fraction`` of the requests of a [value, count] histogram fall."""
    ordered = sorted(hist)
    goal = fraction * sum(count for _, count in ordered)
    seen = 0
    for value, count in ordered:
        seen += count
        if seen >= goal:
            return value
    return ordered[-1][0] if ordered else 0.0


def taking_turns(
    targets: dict[str, int],
    connections: int,
    seconds: float,
    unique: bool = False,
    turns: int = 5,
    headers: dict[str, dict[str, str]] | None = None,
    at_once: bool = False,
) -> dict[str, dict[str, float]]:
    """Latency of each target in ``turns`` short runs that take turns (the order reversed
    every other round), so every figure sees the machine in the same state; percentiles
    from the pooled histograms. ``headers``: extra headers per target name; ``at_once``:
    see drivers.each."""
    turns = max(1, min(turns, int(seconds)))
    hists: dict[str, list[list[int]]] = {name: [] for name in targets}
    errors = dict.fromkeys(targets, 0)

    def one(turn: int, name: str) -> dict[str, Any]:  # wrk's JSON line
        return wrk(
            targets[name],
            connections,
            seconds / turns,
            unique,
            run=f"{name}{connections}-{turn}",
            headers=(headers or {}).get(name),
        )

    for name, result in each_in_turns(list(targets), turns, one, at_once):
        hists[name] += result["hist"]
        errors[name] += result["errors"]
    return {
        name: {"p50_us": percentile(h, 0.5), "p99_us": percentile(h, 0.99), "errors": errors[name]}
        for name, h in hists.items()
    }


def warm(
    port: int, prompt: str = PROMPT, stream: bool = False, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps(
        {"model": "gpt-bench", "stream": stream, "messages": [{"role": "user", "content": prompt}]}
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"} | (headers or {}),
    )
    urllib.request.urlopen(request, timeout=30).read()


def rss_kib(proc: subprocess.Popen, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def fill(cache: Path, entries: int, upstream: int) -> None:
    """A store with ``entries`` entries, written in bulk through the store's own record
    format: the benchmark's own prompt and ``stored prompt 0`` .. ``entries - 2``."""
    import diskcache
    import orjson

    from proxy.keys import cache_key, canonical_body
    from proxy.store import Entry
    from proxy.store.record import encode

    cache.mkdir(parents=True, exist_ok=True)
    store = diskcache.Cache(
        str(cache / "entries"), size_limit=64 * 1024**3, eviction_policy="least-recently-stored"
    )
    answer = urllib.request.urlopen(
        urllib.request.Request(
            f"http://127.0.0.1:{upstream}/v1/chat/completions",
            data=json.dumps(
                {
                    "model": "gpt-bench",
                    "seed": 12345,
                    "stream": False,
                    "messages": [{"role": "user", "content": PROMPT}],
                }
            ).encode(),
        ),
        timeout=30,
    ).read()
    ignore = ("stream", "stream_options", "user", "metadata", "store")
    base = f"http://127.0.0.1:{upstream}/v1"
    batch = 5000
    for start in range(0, entries, batch):
        with store.transact():
            for i in range(start, min(entries, start + batch)):
                prompt = PROMPT if i == entries - 1 else f"stored prompt {i}"
                body = {
                    "model": "gpt-bench",
                    "stream": False,
                    "seed": 12345,
                    "messages": [{"role": "user", "content": prompt}],
                }
                key = cache_key("/v1/chat/completions", "", "", base, canonical_body(body, ignore))
                entry = Entry(
                    key,
                    "fp_one",
                    time.time(),
                    200,
                    "application/json",
                    "/v1/chat/completions",
                    "gpt-bench",
                    12345,
                    9,
                    72,
                    answer,
                    orjson.dumps(body),
                )
                store.set(key, encode([entry]))
    store.close()


@dataclass
class Row:
    metric: str
    ours: str
    baselines: str
    ratio: str = ""
    target: str = ""
    met: str = ""


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT MET")


def ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def ratio(a: float, b: float) -> float:
    """``a / b``, or nan when ``b`` is 0: a run that served nothing (a starved smoke run)
    shows nan in its row, and the table still prints."""
    return a / b if b else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--entries", type=int, help="Size of the large store.")
    parser.add_argument(
        "--litellm",
        action="store_true",
        help="Also measure LiteLLM's proxy (installs it into a venv).",
    )
    parser.add_argument(
        "--portkey",
        action="store_true",
        help="Also measure Portkey's open-source gateway on misses (installs it with npm).",
    )
    parser.add_argument("--peers", action="store_true", help="--litellm and --portkey.")
    args = parser.parse_args()
    peers = Peers(litellm=args.litellm or args.peers, portkey=args.portkey or args.peers)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    entries = args.entries or mode.entries
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is missing (apt-get install wrk)")
    print(machine(mode), flush=True)
    servers = Servers()
    rows: list[Row] = []
    try:
        run(servers, mode, entries, peers, rows)
    finally:
        servers.stop()
        shutil.rmtree(servers.tmp, ignore_errors=True)
    header = Row("metric", "seedproxy", "baselines (same run)", "ratio", "target", "")
    widths = [
        max(len(getattr(r, f)) for r in (header, *rows))
        for f in ("metric", "ours", "baselines", "ratio", "target", "met")
    ]
    print()
    for i, r in enumerate([header, *rows]):
        cells = [r.metric, r.ours, r.baselines, r.ratio, r.target, r.met]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def loop_name() -> str:
    from proxy.observe import loop_name as name

    return name()


def machine(mode: Mode) -> str:
    """When and where: what the README's table cites of a run."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        f"seedproxy benchmark, {mode.name} mode, {now:%Y-%m-%d %H:%M} UTC\n"
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()} ({platform.python_implementation()}), "
        f"loop {loop_name()}, wrk -t1"
    )


@dataclass
class Peers:
    """The peers measured besides nginx, each only when asked for (they install things)."""

    litellm: bool = False
    portkey: bool = False


FLOOR = "bare aiohttp proxy"  # bench/floor.py: what aiohttp and one diskcache write cost


def miss_row(metric: str, c: int, turns: dict[str, dict[str, float]], notes: list[str]) -> Row:
    """One row of added latency on misses: seedproxy's and the others' p50 / p99 minus the
    upstream's own, seedproxy's p50 and p99 beyond the floor, and issue 23's targets."""
    direct, via, floor = turns["direct"], turns["proxy"], turns[FLOOR]
    add50 = (via["p50_us"] - direct["p50_us"]) / 1000
    add99 = (via["p99_us"] - direct["p99_us"]) / 1000
    # seedproxy's own part: what it adds beyond the bare proxy, which moves with the VM
    own50 = (via["p50_us"] - floor["p50_us"]) / 1000
    own99 = (via["p99_us"] - floor["p99_us"]) / 1000
    if c == 1:
        ok = own50 <= 0.10 and add99 <= 3.0
        target = "issue 23: p50 <= floor's +0.10 ms, p99 <= +3 ms"
    else:
        ok = own50 <= 0 and own99 <= 0
        target = "issue 23: p50 and p99 <= floor's"
    base = [f"direct {ms(direct['p50_us'])} / {ms(direct['p99_us'])}"]
    for name, other in turns.items():
        if name in ("direct", "proxy"):
            continue
        failed = f" ({other['errors']:,.0f} errors)" if other.get("errors") else ""
        base.append(
            f"{name} {(other['p50_us'] - direct['p50_us']) / 1000:+.2f} ms / "
            f"{(other['p99_us'] - direct['p99_us']) / 1000:+.2f} ms{failed}"
        )
    return Row(
        metric,
        f"{add50:+.2f} ms / {add99:+.2f} ms",
        "; ".join(base + notes),
        f"p50 {own50:+.2f} ms, p99 {own99:+.2f} ms vs floor",
        target,
        verdict(ok),
    )


def miss_rows(servers: Servers, up50: int, peers: Peers, mode: Mode, rows: list[Row]) -> int:
    """Added latency on misses (50 ms upstream), driven by wrk and by the SDK-like driver,
    beside the bare aiohttp proxy (the floor), nginx, Portkey and LiteLLM; returns the port
    of the proxy in front of that upstream."""
    (proxy50, _), floor50 = each(
        [
            functools.partial(servers.proxy, up50, servers.tmp / "c50"),
            functools.partial(servers.floor, up50),
        ],
        mode.at_once,
    )
    nginx50 = start_nginx(servers, up50)
    targets = {"direct": up50, "proxy": proxy50, FLOOR: floor50}
    if nginx50:
        targets["nginx"] = nginx50
    headers = {"Portkey": portkey.headers(up50)}
    notes = []
    pk_proc: subprocess.Popen | None = None
    if peers.portkey:
        try:
            pk50 = free_port()
            pk_proc = portkey.start(servers, pk50)
            for i in range(10):  # node compiles its hot paths on the first requests
                warm(pk50, f"portkey warm {i} {time.time_ns()}", headers=headers["Portkey"])
            targets["Portkey"] = pk50
        except (portkey.Unavailable, SystemExit, OSError) as exc:
            notes.append(f"Portkey not measured ({exc})")
    else:
        notes.append("Portkey not measured (--portkey)")
    ll50 = start_litellm(servers, up50) if peers.litellm else None
    if not ll50:
        notes.append("LiteLLM not measured (--litellm)")
    for c in (1, 16):
        turns = taking_turns(
            targets, c, mode.latency_seconds, unique=True, headers=headers, at_once=mode.at_once
        )
        if ll50:  # apart, after the others: work it does after answering would run into theirs
            turns |= taking_turns({"LiteLLM": ll50[0]}, c, mode.latency_seconds, unique=True)
        rows.append(miss_row(f"added latency on misses, c={c}", c, turns, notes))
    for c, requests in ((1, mode.sdk_c1), (16, mode.sdk_c16)):
        turns = sdk_taking_turns(
            targets, c, requests, mode.sdk_turns, headers=headers, at_once=mode.at_once
        )
        if ll50:
            turns |= sdk_taking_turns({"LiteLLM": ll50[0]}, c, requests, mode.sdk_turns)
        rows.append(miss_row(f"added latency on misses (async SDK client), c={c}", c, turns, notes))
    for proc in (ll50[1] if ll50 else None, pk_proc):
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    return proxy50


@dataclass
class HitPorts:
    up0: int  # the fake upstream at 0 ms
    ceiling: int  # bench/ceiling.py
    proxy: int  # seedproxy, one process
    proxy2: int  # seedproxy --workers 2
    nginx: int | None


def hit_throughput_rows(
    servers: Servers, mode: Mode, peers: Peers, ports: HitPorts, rows: list[Row]
) -> None:
    """Hit throughput at 64 connections, non-streamed and streamed, beside the constant-body
    aiohttp server, the fake upstream, nginx and LiteLLM (one process and --num_workers 2)."""
    t, proxy, proxy2, nginx = mode.seconds, ports.proxy, ports.proxy2, ports.nginx
    const, fake, hits, streamed, hits2, *ng_run = each(
        [
            functools.partial(wrk, ports.ceiling, 64, t),
            functools.partial(wrk, ports.up0, 64, t),
            functools.partial(wrk, proxy, 64, t),
            functools.partial(wrk, proxy, 64, t, stream=True),
            functools.partial(wrk, proxy2, 64, t),
            *([functools.partial(wrk, nginx, 64, t)] if nginx else []),
        ],
        mode.at_once,
    )
    ng = ng_run[0] if ng_run else None
    ll: dict[int, dict[str, float]] = {}
    if peers.litellm:  # measured, then stopped: it is heavy, and the next runs need the cores
        for workers in (1, 2):
            port, proc = start_litellm(servers, ports.up0, workers)
            wrk(port, 64, 1)  # every worker through its first requests (they start one by one)
            ll[workers] = wrk(port, 64, t)
            proc.terminate()
            proc.wait(30)
    base = [f"fake upstream 0 ms {fake['rps']:,.0f}", f"constant-body aiohttp {const['rps']:,.0f}"]
    if ng:
        base.append(f"nginx {ng['rps']:,.0f}")
    base.append(f"LiteLLM {ll[1]['rps']:,.0f}" if ll else "LiteLLM not measured (--litellm)")
    rows.append(
        Row(
            "hit throughput, 1 process, c=64",
            f"{hits['rps']:,.0f} req/s",
            "; ".join(base),
            f"{ratio(hits['rps'], const['rps']):.2f}x constant-body aiohttp, "
            f"{ratio(hits['rps'], fake['rps']):.0%} of fake",
            ">= 0.60x constant-body aiohttp",
            verdict(hits["rps"] >= 0.6 * const["rps"]),
        )
    )
    rows.append(
        Row(
            "  p50 / p99 at c=64",
            f"{ms(hits['p50_us'])} / {ms(hits['p99_us'])}",
            f"fake {ms(fake['p50_us'])} / {ms(fake['p99_us'])}"
            + (f"; nginx {ms(ng['p50_us'])} / {ms(ng['p99_us'])}" if ng else ""),
        )
    )
    rows.append(
        Row(
            "streamed hit throughput, 1 process, c=64",
            f"{streamed['rps']:,.0f} req/s",
            f"non-streamed {hits['rps']:,.0f}; p50 / p99 {ms(streamed['p50_us'])} / "
            f"{ms(streamed['p99_us'])}",
            f"{ratio(streamed['rps'], hits['rps']):.2f}x non-streamed",
            ">= 0.5x non-streamed",
            verdict(streamed["rps"] >= 0.5 * hits["rps"]),
        )
    )
    rows.append(
        Row(
            "hit throughput, --workers 2, c=64",
            f"{hits2['rps']:,.0f} req/s",
            f"1 process {hits['rps']:,.0f}; "
            + (
                f"LiteLLM --num_workers 2 {ll[2]['rps']:,.0f}"
                if ll
                else "LiteLLM --num_workers 2 not measured (--litellm)"
            ),
            f"{ratio(hits2['rps'], hits['rps']):.2f}x",
            ">= 1.8x one process",
            verdict(hits2["rps"] >= 1.8 * hits["rps"]),
        )
    )
    if ng:
        rows.append(
            Row(
                "  vs nginx proxy_cache",
                f"{hits['rps']:,.0f} req/s",
                f"nginx {ng['rps']:,.0f}",
                f"{ratio(hits['rps'], ng['rps']):.0%} "
                f"(workers 2: {ratio(hits2['rps'], ng['rps']):.0%})",
            )
        )
    rows.append(
        Row(
            "vs LiteLLM hit throughput",
            f"{hits['rps']:,.0f} req/s",
            f"LiteLLM {ll[1]['rps']:,.0f}, --num_workers 2 {ll[2]['rps']:,.0f}"
            if ll
            else "not measured",
            f"{ratio(hits['rps'], ll[1]['rps']):.0f}x (workers 2 vs 2: "
            f"{ratio(hits2['rps'], ll[2]['rps']):.0f}x)"
            if ll
            else "",
            ">= 50x",
            verdict(hits["rps"] >= 50 * ll[1]["rps"]) if ll else "-",
        )
    )


def first_byte_rows(proxy: int, mode: Mode, rows: list[Row]) -> None:
    """Time to the first byte of a hit's body, streamed (its first event) and not, at c=1,
    through the SDK-like driver; the two kinds take turns."""
    turns = sdk_taking_turns(
        {"streamed": proxy, "non-streamed": proxy},
        1,
        mode.first_byte,
        mode.sdk_turns,
        options={"streamed": {"stream": True}},
        at_once=mode.at_once,
        hit=True,
        first_byte=True,
    )
    s, n = turns["streamed"], turns["non-streamed"]
    rows.append(
        Row(
            "first byte of a streamed hit, c=1 (async SDK client)",
            f"{ms(s['p50_us'])} / {ms(s['p99_us'])}",
            f"non-streamed hit {ms(n['p50_us'])} / {ms(n['p99_us'])}",
            f"p50 {ratio(s['p50_us'], n['p50_us']):.2f}x non-streamed",
        )
    )


def suite_row(upstream: int, mode: Mode, rows: list[Row]) -> None:
    """A generated suite (one chat call per test) replayed by the pytest plugin, by
    pytest-recording and mocked with no HTTP, whole pytest runs taking turns
    (bench/suites.py): the cost per test beyond the mocked floor."""
    tests = mode.suite_tests
    seconds = suites.measure(
        f"http://127.0.0.1:{upstream}/v1", tests, mode.suite_turns, mode.at_once
    )
    cost = suites.per_test_ms(seconds, tests)
    ours, theirs = cost["seedproxy"], cost["pytest-recording"]
    floor = statistics.median(seconds["mocked"])
    rows.append(
        Row(
            f"pytest suite replayed, {tests} tests, per test beyond mocked",
            f"{ours:+.2f} ms",
            f"pytest-recording {theirs:+.2f} ms; mocked suite {floor:.2f} s "
            f"({mode.suite_turns} runs each)",
            f"{ours / theirs:.2f}x" if theirs > 0 else "",
            "issue 30: <= pytest-recording's",
            verdict(ours <= theirs),
        )
    )


def hit_rows(servers: Servers, mode: Mode, peers: Peers, ports: HitPorts, rows: list[Row]) -> None:
    """Hits on the one-process seedproxy beside nginx: throughput, latency at c=1 and c=16,
    the time to the first byte."""
    warm(ports.proxy, stream=True)  # a streamed request on the stored answer: served as events
    hit_throughput_rows(servers, mode, peers, ports, rows)
    nginx = ports.nginx
    for c in (1, 16):
        turns = taking_turns(
            {"proxy": ports.proxy, **({"nginx": nginx} if nginx else {})},
            c,
            mode.latency_seconds,
            at_once=mode.at_once,
        )
        h, n = turns["proxy"], turns.get("nginx")
        rows.append(
            Row(
                f"hit latency p50 / p99, c={c}",
                f"{ms(h['p50_us'])} / {ms(h['p99_us'])}",
                f"nginx {ms(n['p50_us'])} / {ms(n['p99_us'])}" if n else "nginx absent",
            )
        )
    first_byte_rows(ports.proxy, mode, rows)


def first_chunk_row(up50: int, proxy50: int, mode: Mode, rows: list[Row]) -> None:
    """Streaming: the time to the first chunk of a miss, direct and through seedproxy."""
    ttfc = asyncio.run(first_chunks_ms({"direct": up50, "proxy": proxy50}, mode.first_chunks))
    direct_ttfc, proxy_ttfc = ttfc["direct"], ttfc["proxy"]
    added = proxy_ttfc - direct_ttfc
    rows.append(
        Row(
            "stream first-chunk added on misses",
            f"{added:+.2f} ms",
            f"direct {direct_ttfc:.2f} ms, via proxy {proxy_ttfc:.2f} ms",
            "",
            "<= 2 ms",
            verdict(added <= 2.0),
        )
    )


def big_answer_row(servers: Servers, up30k: int, proxy: int, mode: Mode, rows: list[Row]) -> None:
    """A 30 KB hit beside a 1 KB one, at c=1."""
    proxy30k, _ = servers.proxy(up30k, servers.tmp / "c30k")
    warm(proxy30k)
    big, small = each(
        [
            functools.partial(wrk, proxy30k, 1, mode.latency_seconds),
            functools.partial(wrk, proxy, 1, mode.latency_seconds),
        ],
        mode.at_once,
    )
    rows.append(
        Row(
            "hit latency, 30 KB answer, c=1",
            f"{ms(big['p50_us'])} / {ms(big['p99_us'])}",
            f"1 KB {ms(small['p50_us'])} / {ms(small['p99_us'])}",
            f"{ratio(big['p50_us'], small['p50_us']):.2f}x",
        )
    )


def store_runs(
    servers: Servers, mode: Mode, up0: int, n: int
) -> tuple[dict[str, float], dict[str, float], dict[str, float], int]:
    """A seedproxy on the store of ``n`` entries that :func:`fill` wrote: latency at c=1 and
    throughput at c=64 over keys spread on the whole store (a large one's hits are read from
    SQLite, a small one's fit the memory of hot records), latency on the one prompt (always
    from memory), then its RSS; stopped after."""
    port, proc = servers.proxy(up0, servers.tmp / f"store-{n}")
    warm(port)
    wrk(port, 16, max(1, mode.latency_seconds / 2), keys=n - 1)  # warm the page cache
    lt, t = mode.latency_seconds, mode.seconds
    spread1, spread64, hot = each(
        [
            functools.partial(wrk, port, 1, lt, keys=n - 1),
            functools.partial(wrk, port, 64, t, keys=n - 1),
            functools.partial(wrk, port, 1, lt),
        ],
        mode.at_once,
    )
    rss = rss_kib(proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    return spread1, spread64, hot, rss


def store_rows(servers: Servers, mode: Mode, entries: int, up0: int, rows: list[Row]) -> None:
    """A large store beside one of 1,000 entries; a tenth of it tells whether memory grows
    with the entries. The tenth only gives its RSS, but takes the same runs, so its caches
    see the same load; a size named twice (the tenth of a small store) is measured once."""
    sizes = {"small": 1000, "tenth": max(1000, entries // 10), "large": entries}
    distinct = list(dict.fromkeys(sizes.values()))
    started = time.monotonic()
    for n in distinct:
        fill(servers.tmp / f"store-{n}", n, up0)
    filled = time.monotonic() - started
    os.sync()  # the fill's dirty pages written back now, not during the measurements
    runs = each(
        [functools.partial(store_runs, servers, mode, up0, n) for n in distinct], mode.at_once
    )
    results = dict(zip(distinct, runs, strict=True))
    s1, s64, s_hot, s_rss = results[sizes["small"]]
    l1, l64, l_hot, l_rss = results[entries]
    t_rss = results[sizes["tenth"]][3]
    slower = ratio(l1["p50_us"], s1["p50_us"])
    rows.append(
        Row(
            f"hit latency with {entries:,} entries, c=1, random keys",
            f"{ms(l1['p50_us'])} / {ms(l1['p99_us'])}",
            f"1,000 entries {ms(s1['p50_us'])} / {ms(s1['p99_us'])} (filled in {filled:.0f} s)",
            f"{slower:.2f}x",
            "<= 1.5x",
            verdict(slower <= 1.5),
        )
    )
    rows.append(
        Row(
            f"  throughput c=64 with {entries:,} entries, random keys",
            f"{l64['rps']:,.0f} req/s",
            f"1,000 entries {s64['rps']:,.0f}",
            f"{ratio(l64['rps'], s64['rps']):.0%}",
        )
    )
    rows.append(
        Row(
            f"  one key, c=1, with {entries:,} entries",
            f"{ms(l_hot['p50_us'])} / {ms(l_hot['p99_us'])}",
            f"1,000 entries {ms(s_hot['p50_us'])} / {ms(s_hot['p99_us'])}",
            f"{ratio(l_hot['p50_us'], s_hot['p50_us']):.2f}x",
        )
    )
    # Bounded caches (hot records, SQLite's page cache and map per connection) fill with
    # any store larger than they are; what must not happen is growth beyond that.
    grown = entries - sizes["tenth"]
    per_entry = f"{(l_rss - t_rss) * 1024 / grown:+.2f} bytes/entry" if grown > 0 else ""
    rows.append(
        Row(
            f"RSS with {entries:,} entries, random keys",
            f"{l_rss / 1024:.1f} MiB",
            f"{sizes['tenth']:,} entries {t_rss / 1024:.1f} MiB; 1,000 entries "
            f"{s_rss / 1024:.1f} MiB (fits the bounded caches)",
            per_entry,
            f"no growth from {sizes['tenth']:,} entries (bounded caches)",
            verdict(l_rss <= t_rss * 1.1),
        )
    )


def run(servers: Servers, mode: Mode, entries: int, peers: Peers, rows: list[Row]) -> None:
    at = mode.at_once
    up0, up50, up30k, ceiling = each(
        [
            functools.partial(servers.upstream, 0),
            functools.partial(servers.upstream, 50),
            functools.partial(servers.upstream, 0, LINES_30KB),
            servers.ceiling,
        ],
        at,
    )
    (proxy, proxy_proc), (proxy2, _) = each(
        [
            functools.partial(servers.proxy, up0, servers.tmp / "c1"),
            functools.partial(servers.proxy, up0, servers.tmp / "c2", workers=2),
        ],
        at,
    )
    nginx = start_nginx(servers, up0)
    for port in (proxy, proxy2, *([nginx] if nginx else [])):
        for _ in range(3):
            warm(port)
    # the sections, each with rows of its own: in this order, or all at once in smoke mode
    hit_ports = HitPorts(up0, ceiling, proxy, proxy2, nginx)
    sections: list[Callable[[list[Row]], object]] = [
        functools.partial(hit_rows, servers, mode, peers, hit_ports),
        lambda part: first_chunk_row(up50, miss_rows(servers, up50, peers, mode, part), mode, part),
        functools.partial(big_answer_row, servers, up30k, proxy, mode),
        functools.partial(suite_row, up0, mode),
        functools.partial(store_rows, servers, mode, entries, up0),
    ]
    parts: list[list[Row]] = [[] for _ in sections]
    each([functools.partial(job, part) for job, part in zip(sections, parts, strict=True)], at)
    rows += [row for part in parts for row in part]
    rows.append(
        Row(
            "peak RSS (1 process, after all its runs)",
            f"{rss_kib(proxy_proc, 'VmHWM') / 1024:.1f} MiB",
            "",
        )
    )


def start_nginx(servers: Servers, upstream: int) -> int | None:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        return None
    port = free_port()
    prefix = servers.tmp / f"nginx-{upstream}"
    (prefix / "logs").mkdir(parents=True)
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(f"""
{user}
worker_processes auto;
daemon off;
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_buffer_size 64k;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy_temp;
  fastcgi_temp_path {prefix}/fastcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  proxy_cache_path {prefix}/cache levels=1:2 keys_zone=bench:16m max_size=2g inactive=1h
                   use_temp_path=off;
  upstream fake {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location /healthz {{ return 200 "ok"; }}
    location / {{
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_methods POST;
      proxy_cache_key "$request_uri|$request_body";
      proxy_cache_valid 200 1h;
      proxy_ignore_headers Cache-Control Expires Set-Cookie;
      add_header X-Cache $upstream_cache_status;
    }}
  }}
}}
""")
    servers.start([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], port)
    return port


def start_litellm(
    servers: Servers, upstream: int, workers: int = 1
) -> tuple[int, subprocess.Popen]:
    """LiteLLM's proxy with its disk cache in front of ``upstream``, from its own venv
    (created on first use), offline: no cost-map download, no telemetry, no master key;
    ``workers``: its ``--num_workers`` (uvicorn worker processes)."""
    venv = ROOT / "bench" / ".venv-litellm"
    litellm = venv / "bin" / "litellm"
    if not litellm.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]>=1.106", "diskcache"],
            check=True,
        )
    port = free_port()
    config = servers.tmp / f"litellm-{upstream}-{workers}.yaml"
    config.write_text(f"""
model_list:
  - model_name: gpt-bench
    litellm_params:
      model: openai/gpt-bench
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: none
litellm_settings:
  cache: true
  cache_params:
    type: disk
    disk_cache_dir: {servers.tmp / f"litellm-cache-{upstream}-{workers}"}
general_settings:
  dangerously_permit_weak_or_unset_master_key: true
""")
    proc = servers.start(
        [
            *(str(litellm), "--config", str(config), "--port", str(port)),
            *("--host", "127.0.0.1", "--num_workers", str(workers)),
        ],
        port,
        health="/health/liveliness",
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"},
    )
    for _ in range(3):  # its first calls set things up
        warm(port)
    return port, proc


if __name__ == "__main__":
    main()
