"""Load like the async openai SDK's: one aiohttp ClientSession for the whole run (a pool of
keep-alive connections at least as large as the concurrency), ``--concurrency`` requests in
flight, each a chat completion like bench/chat.lua's, its latency timed with
time.perf_counter from send to the body fully read. Runs in its own process, like wrk.

    python bench/sdkload.py --port P --concurrency C --requests N --run TAG [--header K:V]...

Every request is a new prompt (a miss) unless ``--hit`` (the benchmark's one prompt);
``--stream`` asks for ``"stream": true``; ``--first-byte`` times the first chunk of the body
instead of all of it. Before the timed requests, ``--concurrency`` untimed ones open the
pool's connections. Prints one JSON line: requests, errors, duration_us and latencies_us
(the successful requests' latencies in microseconds, in completion order).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.observe import new_event_loop  # the proxy's loop: uvloop when installed

PROMPT = "benchmark prompt fixed"  # chat.lua's and run.py's warm() prompt: hits on one key
# what the openai SDK sends besides the body (the x-stainless-* ones shortened)
SDK_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "AsyncOpenAI/Python 1.99.0",
    "Authorization": "Bearer sk-bench",
    "X-Stainless-Lang": "python",
    "X-Stainless-Async": "async:asyncio",
}


def body(stream: bool, prompt: str) -> bytes:
    return json.dumps(
        {
            "model": "gpt-bench",
            "stream": stream,
            "messages": [{"role": "user", "content": prompt}],
        },
        separators=(",", ":"),
    ).encode()


async def load(args: argparse.Namespace) -> dict[str, object]:
    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    headers = dict(SDK_HEADERS)
    for item in args.header:
        name, _, value = item.partition(":")
        headers[name.strip()] = value.strip()
    fixed = body(args.stream, PROMPT)
    latencies: list[int] = []
    errors = 0
    counter = 0

    def next_body() -> bytes:
        nonlocal counter
        counter += 1
        if args.hit:
            return fixed
        return body(args.stream, f"benchmark prompt {args.run}-{counter}-{time.time_ns()}")

    connector = aiohttp.TCPConnector(limit=max(100, args.concurrency), keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(timed: bool) -> None:
            nonlocal errors
            data = next_body()
            started = time.perf_counter()
            try:
                async with session.post(url, data=data, headers=headers) as answer:
                    if args.first_byte:
                        await answer.content.readany()
                        took = time.perf_counter() - started
                        await answer.read()
                    else:
                        await answer.read()
                        took = time.perf_counter() - started
                    ok = answer.status == 200
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            if not timed:
                return
            if ok:
                latencies.append(round(took * 1e6))
            else:
                errors += 1

        await asyncio.gather(*(one(False) for _ in range(args.concurrency)))  # open the pool
        left = args.requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one(True)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        duration = time.perf_counter() - started
    return {
        "requests": args.requests,
        "errors": errors,
        "duration_us": round(duration * 1e6),
        "latencies_us": latencies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--run", default="0", help="a tag that keeps prompts apart between runs")
    parser.add_argument("--header", action="append", default=[], help="K:V, repeatable")
    parser.add_argument("--hit", action="store_true", help="the benchmark's one prompt")
    parser.add_argument("--stream", action="store_true", help='"stream": true')
    parser.add_argument("--first-byte", action="store_true", help="time the first body chunk")
    args = parser.parse_args()
    loop = new_event_loop()
    try:
        result = loop.run_until_complete(load(args))
    finally:
        loop.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
