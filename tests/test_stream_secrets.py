"""No stored or replayed event spells a secret (issue 28 item 9): an upstream that splits a
secret across 1-3 character ``response.output_text.delta`` events gets its recorded
events rebuilt from the redacted answer, so the store, the cassette and every replayed
stream carry ``[REDACTED:...]`` in deltas that agree with the done events."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from proxy.sse import iter_events, parse_event
from proxy.store.disk import DiskStore
from tests.conftest import sdk
from tests.harness import cli

SECRET = "AKIAIOSFODNN7EXAMPLE"
REPLY = f"Remember me: {SECRET} is the deploy key."
ASK = {"model": "gpt-test", "input": "What was the key?"}


@pytest.fixture
def backend() -> str:
    return "disk"


def texts(events: list[dict[str, Any]]) -> tuple[str, str]:
    """(the text deltas joined, the done event's text) of Responses events as JSON."""
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    done = [e["text"] for e in events if e["type"] == "response.output_text.done"]
    assert len(done) == 1
    return deltas, done[0]


def parsed(stream: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(parse_event(raw)[1] or b"") for raw in iter_events(stream)]


def redacted(events: list[dict[str, Any]]) -> None:
    """The deltas agree with the done event, and neither spells the secret."""
    deltas, done = texts(events)
    assert deltas == done
    assert SECRET not in deltas and "[REDACTED:" in deltas
    assert SECRET not in orjson.dumps(events).decode()


def stream(client: Any) -> tuple[str, str, list[dict[str, Any]]]:
    """(X-Cache, key, events) of a streamed Responses request through the SDK."""
    with client.responses.with_streaming_response.create(**ASK, stream=True) as response:
        events = [e.model_dump(exclude_unset=True) for e in response.parse()]
        return response.headers["x-cache"], response.headers["x-seedproxy-key"], events


@pytest.mark.parametrize("sizes", [(1,), (3,), (1, 2, 3)])
def test_a_secret_split_across_deltas_is_in_no_stored_replayed_or_exported_event(
    make_proxy, upstream, cache_dir, tmp_path, sizes
):
    upstream.reply, upstream.delta_sizes = REPLY, sizes
    proxy = make_proxy()
    with sdk(proxy) as client:
        label, key, own = stream(client)
        assert label == "MISS"
        assert texts(own) == (REPLY, REPLY)  # the fetching client's own answer, as sent
        assert max(len(e["delta"]) for e in own if "delta" in e) <= 3  # split indeed
        (entry,) = proxy.bg.run(proxy.pipeline.store.variants(key))
        redacted(parsed(entry.stream))  # the store
        assert SECRET.encode() not in entry.body
        label, _, replayed = stream(client)
        assert label == "HIT"
        redacted(replayed)  # the replayed stream
    out = tmp_path / "cassette.json"
    result = cli("export", str(out), "--cache-dir", str(cache_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (interaction,) = orjson.loads(out.read_bytes())["interactions"]
    redacted([item["data"] for item in interaction["response"]["events"]])  # the cassette


def test_a_coalesced_client_gets_the_rebuilt_stream(make_proxy, upstream):
    upstream.reply, upstream.delta_sizes = REPLY, (2,)
    upstream.gate = threading.Event()  # the first stream waits after its first event
    proxy = make_proxy()
    with sdk(proxy) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(stream, client)
        deadline = time.monotonic() + 20
        while len(upstream.calls) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second = pool.submit(stream, client)
        while proxy.counters.get("coalesced", 0) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        upstream.gate.set()
        assert texts(first.result(30)[2]) == (REPLY, REPLY)
        redacted(second.result(30)[2])
    assert len(upstream.calls) == 1


def test_an_imported_cassette_with_a_split_secret_is_stored_rebuilt(
    make_proxy, upstream, cache_dir, tmp_path
):
    # recorded with the detectors off: a hand-made cassette with the secret split
    upstream.reply, upstream.delta_sizes = REPLY, (1, 2, 3)
    proxy = make_proxy(redact={"builtin": False})
    with sdk(proxy) as client:
        stream(client)
    out = tmp_path / "cassette.json"
    assert cli("export", str(out), "--cache-dir", str(cache_dir), cwd=tmp_path).returncode == 0
    events = orjson.loads(out.read_bytes())["interactions"][0]["response"]["events"]
    assert texts([item["data"] for item in events]) == (REPLY, REPLY)
    imported = tmp_path / "imported"
    result = cli("import", str(out), "--cache-dir", str(imported), cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    async def stored() -> list[bytes]:
        store = DiskStore(imported)
        await store.start()
        try:
            return [e.stream for k in await store.keys() for e in await store.variants(k)]
        finally:
            await store.close()

    (recorded,) = asyncio.run(stored())
    redacted(parsed(recorded))
