"""The cassette format (pure, plus its one file write), the in-memory store a cassette is
served from, and the CLI's store options and key command."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import orjson
import pytest

from proxy import cassette
from proxy.config import load_settings, with_overrides
from proxy.keys import cache_key, canonical_body
from proxy.store import Entry, Note
from proxy.store.disk import DiskStore
from proxy.store.memory import MemoryStore
from tests.harness import cli

pytestmark = pytest.mark.every_store

SETTINGS = load_settings(None, {}, {"upstream.base_url": "http://127.0.0.1:9/v1"})
REQUEST = {"model": "gpt-test", "messages": [{"role": "user", "content": "hé"}], "seed": 7}
ANSWER = {
    "id": "c1",
    "system_fingerprint": "fp_one",
    "choices": [{"message": {"content": "x"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4},
}
EVENTS = (
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"r"}}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r"}}\n\n'
)


def entry(endpoint: str = "/v1/chat/completions", stream: bytes = b"", **request: object) -> Entry:
    body = {**REQUEST, **request}
    key = cassette.key_for(endpoint, body, "", "", SETTINGS)
    return Entry(
        key,
        "fp_one",
        1767225600.25,
        200,
        "application/json",
        endpoint,
        "gpt-test",
        7,
        3,
        4,
        orjson.dumps(ANSWER),
        orjson.dumps(body),
        stream,
    )


def test_a_cassette_reads_back_to_the_same_entries_and_bytes():
    response = entry("/v1/responses", EVENTS, input="hi")  # no seed; usage in other fields
    entries = [
        entry(),
        dataclasses.replace(response, seed=None, prompt_tokens=0, completion_tokens=0),
    ]
    data = cassette.dumps(cassette.interaction(e, SETTINGS) for e in entries)
    text = data.decode()
    assert '"content": "hé"' in text and "\n  " in text  # bodies as JSON, readable
    first = orjson.loads(data)["interactions"][0]
    assert list(first) == ["endpoint", "model", "fingerprint", "recorded_at", "request", "response"]
    assert first["recorded_at"] == "2026-01-01T00:00:00.250000Z"
    events = orjson.loads(data)["interactions"][1]["response"]["events"]
    assert [e["event"] for e in events] == ["response.created", "response.completed"]
    assert events[0]["data"] == {"type": "response.created", "response": {"id": "r"}}
    loaded = [r.entry for r in cassette.loads(data, SETTINGS)]
    assert loaded == entries
    assert cassette.dumps(cassette.interaction(e, SETTINGS) for e in loaded) == data


def test_a_stream_with_comments_and_crlf_lines_is_written_as_a_file_that_loads():
    """Events without data (``: keep-alive``) are left out; CRLF and mixed line ends split."""
    stream = (
        b": keep-alive\r\n\r\n"
        b"event: response.created\r\n"
        b'data: {"type":"response.created","response":{"id":"r"}}\n\r\n'
        b"event: response.completed\r\n"
        b'data: {"type":"response.completed","response":{"id":"r"}}\r\n\r\n'
    )
    data = cassette.dumps(
        [cassette.interaction(entry("/v1/responses", stream, input="hi"), SETTINGS)]
    )
    events = orjson.loads(data)["interactions"][0]["response"]["events"]
    assert [e["event"] for e in events] == ["response.created", "response.completed"]
    [loaded] = cassette.loads(data, SETTINGS)
    assert loaded.entry.stream == EVENTS


def test_keys_are_computed_again_with_the_current_settings():
    data = cassette.dumps([cassette.interaction(entry(temperature=0.5), SETTINGS)])
    changed = with_overrides(
        SETTINGS,
        upstream={"base_url": "http://127.0.0.1:10/v1"},
        cache={"ignore_fields": ("stream", "temperature")},
    )
    (recording,) = cassette.loads(data, changed)
    canonical = canonical_body(REQUEST, ("stream",))  # temperature is ignored now
    expected = cache_key("/v1/chat/completions", "", "", "http://127.0.0.1:10/v1", canonical)
    assert recording.entry.key == expected


def test_query_and_namespace_are_kept_and_an_entry_from_elsewhere_is_keyed_again():
    recorded = entry()
    spaced = dataclasses.replace(
        recorded,
        key=cassette.key_for(recorded.endpoint, REQUEST, "api-version=1", "team", SETTINGS),
    )
    item = cassette.interaction(spaced, SETTINGS, "api-version=1", "team")
    assert item is not None and "key" not in item
    assert (item["query"], item["namespace"]) == ("api-version=1", "team")
    (loaded,) = cassette.loads(cassette.dumps([item]), SETTINGS)
    assert loaded.entry.key == spaced.key
    # an export, where it came from unknown: the file shows its request, keyed as these
    # settings key it; the same request and fingerprint again is left out
    repeats = cassette.Repeats(SETTINGS)
    unknown = cassette.interaction(spaced, SETTINGS, repeats=repeats)
    assert unknown is not None and "key" not in unknown and repeats.rekeyed == 1
    (loaded,) = cassette.loads(cassette.dumps([unknown]), SETTINGS)
    assert loaded.entry.key == recorded.key
    assert cassette.interaction(spaced, SETTINGS, repeats=repeats) is None
    assert orjson.loads(cassette.dumps([None]))["interactions"] == []


def test_json_lines_exports_are_still_read():
    line = orjson.dumps(
        {
            "key": "k1",
            "endpoint": "/v1/chat/completions",
            "model": "m",
            "fingerprint": None,
            "created": 1.5,
            "status": 200,
            "content_type": "application/json",
            "seed": 1,
            "request": REQUEST,
            "response": ANSWER,
        }
    )
    (recording,) = cassette.loads(line + b"\n", SETTINGS)
    assert recording.entry.key == "k1" and orjson.loads(recording.entry.body) == ANSWER


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"version": 3, "interactions": []}, "version 3"),
        ({"version": 2, "interactions": {}}, "interactions: expected a list"),
        ({"version": 2, "interactions": [{"endpoint": "/v1/x"}]}, "interaction 1"),
        (
            {
                "version": 2,
                "interactions": [
                    {**cassette.interaction(entry(), SETTINGS), "request": {"seed": True}}
                ],
            },
            "interaction 1: request: Invalid 'seed'",
        ),
    ],
)
def test_what_is_not_a_cassette_is_named(document, problem):
    with pytest.raises(cassette.CassetteError, match=problem.replace("'", ".")):
        cassette.loads(orjson.dumps(document), SETTINGS)


def test_writes_are_atomic_and_skipped_when_nothing_changed(tmp_path: Path):
    path = tmp_path / "sub" / "c.json"
    assert cassette.write(path, b"one\n")
    os.utime(path, ns=(1, 1))
    assert not cassette.write(path, b"one\n")
    assert path.stat().st_mtime_ns == 1
    path.chmod(0o640)
    assert cassette.write(path, b"two\n") and path.read_bytes() == b"two\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.json"]  # no temporary left


def test_the_memory_store_keeps_recording_order_and_one_answer_per_request():
    store = MemoryStore(max_variants=1)
    a, b = entry(), entry(temperature=1)
    store.replace([a, b])
    assert asyncio.run(store.recent(a.endpoint, a.model)) == [b.key, a.key]  # loaded, indexed
    refreshed = dataclasses.replace(a, fingerprint="fp_two")
    asyncio.run(store.put(refreshed))
    assert store.entries() == [refreshed, b]
    held = sum(len(e.body) + len(e.request) + len(e.stream) for e in (refreshed, b))
    assert asyncio.run(store.size()) == (2, held)  # keys; the bytes of what is held
    assert asyncio.run(store.delete(b.key)) == 1
    assert asyncio.run(store.size()) == (1, held - len(b.body) - len(b.request))
    # indexed by its note (the pipeline's next flush), as on the shared stores
    note = Note(a.key, a.endpoint, a.model, "fp_two", refreshed.created, False)
    assert asyncio.run(store.note([note])) == [None]
    assert asyncio.run(store.recent(a.endpoint, a.model)) == [a.key, b.key]


# -- the CLI --------------------------------------------------------------------------------


def test_drift_show_takes_store_options_after_it_and_an_id_prefix(tmp_path: Path):
    async def plant() -> None:
        store = DiskStore(tmp_path / "c")
        for event_id in ("3f9c2a1b7e04", "3f11aa000000"):
            await store.add_event(
                {
                    "kind": "drift",
                    "id": event_id,
                    "time": 1.0,
                    "reason": "refresh",
                    "key": "k",
                    "endpoint": "/v1/chat/completions",
                    "model": "gpt-test",
                    "seed": 1,
                    "cached_fingerprint": "a",
                    "live_fingerprint": "b",
                    "same_fingerprint": False,
                    "similarity": 0.5,
                    "diff": "--- cached\n+++ live\n-x\n+y",
                }
            )
        await store.close()

    asyncio.run(plant())
    shown = cli("drift", "show", "3f9c", "--cache-dir", str(tmp_path / "c"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "drift 3f9c2a1b7e04" in shown.stdout
    ambiguous = cli("drift", "show", "3f", "--cache-dir", str(tmp_path / "c"), cwd=tmp_path)
    assert ambiguous.returncode == 2 and "2 drift events start with '3f'" in ambiguous.stderr
    before = cli(
        "drift", "--cache-dir", str(tmp_path / "c"), "show", "3f11", "--json", cwd=tmp_path
    )
    assert orjson.loads(before.stdout)["id"] == "3f11aa000000"


def test_key_takes_the_options_that_change_a_key(tmp_path: Path):
    request = tmp_path / "request.json"
    request.write_bytes(orjson.dumps({"model": "gpt-test", "messages": REQUEST["messages"]}))
    shown = cli(
        "key",
        str(request),
        "--upstream",
        "http://127.0.0.1:9/v1",
        "--seed-mode",
        "override",
        "--json",
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    body = {**REQUEST, "seed": 12345}  # override: the default seed
    expected = cache_key(
        "/v1/chat/completions", "", "", "http://127.0.0.1:9/v1", canonical_body(body, ("stream",))
    )
    assert orjson.loads(shown.stdout)["key"] == expected
