"""A test suite replayed: what the pytest plugin costs per test beside pytest-recording.

One generated module of N tests, one openai chat call each (the client made at import, as
applications do), run three ways: replayed from seedproxy cassettes (offline), replayed
from pytest-recording (vcrpy) cassettes (offline), and mocked (``create`` patched: no HTTP
at all, the floor). Each is a whole ``pytest`` process, wall-clock, the three taking turns
(the order reversed every other round); a way's cost per test is its time beyond the mocked
suite's, divided by N.

    python bench/suites.py [--tests 300] [--turns 5]   # also a row of bench/run.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from drivers import each, each_in_turns  # noqa: E402

TEST = """
def test_{n}():
    reply = client.chat.completions.create(
        model="gpt-bench", messages=[{{"role": "user", "content": "question {n}"}}]
    )
    assert reply.choices[0].message.content
"""
HEAD = {
    "seedproxy": "import openai, pytest\n\npytestmark = pytest.mark.seedproxy\n"
    "client = openai.OpenAI()\n",
    "pytest-recording": "import openai, pytest\n\npytestmark = pytest.mark.vcr\n"
    "client = openai.OpenAI()\n",
    "mocked": """import openai, pytest
from openai.types.chat import ChatCompletion

client = openai.OpenAI()
ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-bench",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "an answer"}}],
}


@pytest.fixture(autouse=True)
def _mocked(monkeypatch):
    answer = ChatCompletion.model_validate(ANSWER)
    monkeypatch.setattr(client.chat.completions, "create", lambda **kw: answer)
""",
}
# How each way records, then replays offline.
RECORD = {
    "seedproxy": ["--seedproxy-mode", "record"],
    "pytest-recording": ["--record-mode=once"],
    "mocked": [],
}
REPLAY = {
    "seedproxy": ["--seedproxy-mode", "replay"],
    "pytest-recording": ["--record-mode=none"],
    "mocked": [],
}
WAYS = tuple(HEAD)


def suite(where: Path, way: str, tests: int) -> Path:
    """The generated suite for ``way`` in a folder of its own."""
    folder = where / way.replace("-", "_")
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(TEST.format(n=n) for n in range(tests))
    (folder / "test_suite.py").write_text(HEAD[way] + body)
    return folder


def pytest_run(folder: Path, args: list[str], env: dict[str, str]) -> float:
    """One ``pytest`` process on the suite in ``folder``: its wall-clock seconds."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *args],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )
    return time.perf_counter() - started


def measure(
    upstream_url: str, tests: int, turns: int, at_once: bool = False
) -> dict[str, list[float]]:
    """Record each way's cassettes from ``upstream_url``, then time ``turns`` offline
    replays of each, taking turns: the seconds per way. ``at_once``: see drivers.each."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SEEDPROXY_", "OPENAI_"))}
    # Every run compiling the SDK is no one's cost: the runs read and write the usual
    # __pycache__ (a cache folder of their own started empty, so the first run compiled it all).
    base.pop("PYTHONDONTWRITEBYTECODE", None)
    base |= {"PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-bench-placeholder"}
    with tempfile.TemporaryDirectory(prefix="seedproxy-suites-") as where:
        folders = {way: suite(Path(where), way, tests) for way in WAYS}
        # Replays keep the upstream's URL (vcrpy matches on it), and reach nothing: both
        # replay modes refuse the network.
        env = base | {"OPENAI_BASE_URL": upstream_url}
        each([partial(pytest_run, folders[way], RECORD[way], env) for way in WAYS], at_once)
        seconds: dict[str, list[float]] = {way: [] for way in WAYS}

        def replay(turn: int, way: str) -> float:
            return pytest_run(folders[way], REPLAY[way], env)

        for way, took in each_in_turns(list(WAYS), turns, replay, at_once):
            seconds[way].append(took)
    return seconds


def per_test_ms(seconds: dict[str, list[float]], tests: int) -> dict[str, float]:
    """Each way's median cost per test beyond the mocked suite's, in milliseconds."""
    floor = statistics.median(seconds["mocked"])
    return {
        way: (statistics.median(runs) - floor) * 1000 / tests
        for way, runs in seconds.items()
        if way != "mocked"
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import asyncio

    from tests.upstream import FakeUpstream

    loop = asyncio.new_event_loop()
    fake = FakeUpstream()
    url = loop.run_until_complete(fake.start())
    import threading

    threading.Thread(target=loop.run_forever, daemon=True).start()
    seconds = measure(f"{url}/v1", args.tests, args.turns)
    for way, runs in seconds.items():
        print(f"{way}: median {statistics.median(runs):.2f} s over {len(runs)} runs")
    for way, cost in per_test_ms(seconds, args.tests).items():
        print(f"{way}: {cost:+.2f} ms per test beyond the mocked suite")


if __name__ == "__main__":
    main()
