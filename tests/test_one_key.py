"""One key function: a live request's key (through a real app), the key of its recording
in a cassette, ``/_seedproxy/explain``, ``seedproxy key`` and the replay miss's nearest
recording agree, under every key rule at once (seed modes and the seed-mode header,
ignore fields and paths, normalize rules, redaction, repeats, scope, query, namespace)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy import cassette
from proxy.app import PIPELINE, create_app
from proxy.call import namespace as namespace_of
from proxy.cli import main
from proxy.config import Settings, load_settings
from proxy.store.memory import MemoryStore
from tests.harness import BackgroundLoop
from tests.upstream import FakeUpstream

SECRET_A = "sk-proj-" + "A1b2C3d4" * 4
SECRET_B = "sk-proj-" + "Z9y8X7w6" * 4
TEXTS = st.sampled_from(
    [
        "hello",
        "meet on 2026-01-31",
        "meet on 2027-12-01",
        f"my key is {SECRET_A}",
        f"my key is {SECRET_B}",
        "ticket ACME-123456",
        "ticket ACME-654321",
        "sk-learn-compatible",
    ]
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system"]), "content": TEXTS},
    optional={"name": st.sampled_from(["a", "b"])},
)


@dataclass
class Case:
    rules: dict[str, Any]
    body: dict[str, Any]
    query: str
    headers: dict[str, str]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    seed_mode = draw(st.sampled_from(["force", "override", "require", "passthrough"]))
    header = draw(st.sampled_from([None, "force", "override", "require", "passthrough"]))
    rules = {
        "seed_mode": seed_mode,
        "ignore_fields": draw(
            st.lists(st.sampled_from(["stream", "user", "metadata", "temperature"]), unique=True)
        ),
        "ignore_paths": draw(
            st.lists(st.sampled_from(["messages[*].name", "tools[0].id"]), unique=True)
        ),
        "normalize": draw(st.sampled_from([None, [], ["messages[*].content"], ["tools"]])),
        "builtin": draw(st.booleans()),
        "patterns": draw(st.sampled_from([[], ["ACME-[0-9]{6}"]])),
        "repeat": draw(st.sampled_from(["same", "sequence"])),
        "scope": draw(st.sampled_from(["shared", "per-key"])),
    }
    body: dict[str, Any] = {
        "model": "gpt-keys",
        "messages": draw(st.lists(MESSAGE, min_size=1, max_size=3)),
    }
    extra = st.fixed_dictionaries(
        {},
        optional={
            "temperature": st.sampled_from([0, 0.5, 1.0]),
            "user": st.sampled_from(["alice", "bob"]),
            "metadata": st.just({"run": "2026-01-31"}),
            "tools": st.just([{"id": "t-1", "type": "function", "function": {"name": "f"}}]),
        },
    )
    body.update(draw(extra))
    if draw(st.booleans()) or "require" in (header, seed_mode):  # unseeded: never stored
        body["seed"] = draw(st.sampled_from([1, 7, 2**40]))
    headers = {"Authorization": draw(st.sampled_from(["Bearer tok-one", "Bearer tok-two"]))}
    if header is not None:
        headers["X-Seedproxy-Seed-Mode"] = header
    space = draw(st.sampled_from(["", "team-a"]))
    if space:
        headers["X-Seedproxy-Namespace"] = space
    query = draw(
        st.sampled_from(
            ["", "api-version=1", "b=2&a=1", "api_key=abc123", "api_key=xyz789", f"q={SECRET_A}"]
        )
    )
    return Case(rules, body, query, headers)


def toml(rules: dict[str, Any]) -> str:
    """A seedproxy config file with these key rules."""

    def strings(values: list[str]) -> str:
        return "[" + ", ".join(f"'{v}'" for v in values) + "]"

    lines = [
        "[seed]",
        f"mode = '{rules['seed_mode']}'",
        "[cache]",
        "mode = 'record'",
        f"ignore_fields = {strings(rules['ignore_fields'])}",
        f"ignore_paths = {strings(rules['ignore_paths'])}",
        f"repeat = '{rules['repeat']}'",
        f"scope = '{rules['scope']}'",
        "[redact]",
        f"builtin = {str(rules['builtin']).lower()}",
        f"patterns = {strings(rules['patterns'])}",
    ]
    if rules["normalize"] is not None:
        lines += [
            "[[cache.normalize]]",
            r"pattern = '\d{4}-\d\d-\d\d'",
            "replace = '<date>'",
            f"paths = {strings(rules['normalize'])}",
        ]
    return "\n".join(lines) + "\n"


async def through_the_app(
    settings: Settings, case: Case, times: int
) -> tuple[list[str], str, tuple[int, str], list[Any]]:
    """Send the request ``times`` times in record mode (its keys), ask explain for its
    key, then replay a request that differs in one field only (the miss's message); and
    the entries recorded."""
    store = MemoryStore()
    runner = aiohttp.web.AppRunner(create_app(settings, store=store))
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    path = "/v1/chat/completions" + (f"?{case.query}" if case.query else "")
    try:
        async with aiohttp.ClientSession() as http:
            keys = []
            for _ in range(times):
                async with http.post(base + path, json=case.body, headers=case.headers) as r:
                    assert r.status == 200, await r.text()
                    keys.append(r.headers["X-Seedproxy-Key"])
            explain = f"{base}/_seedproxy/explain"
            async with http.post(
                explain, params={"query": case.query}, json=case.body, headers=case.headers
            ) as r:
                assert r.status == 200, await r.text()
                explained = (await r.json())["key"]
            runner.app[PIPELINE].mode = "replay"
            probe = {**case.body, "zz_probe": 1}  # a field no rule drops or rewrites
            async with http.post(base + path, json=probe, headers=case.headers) as r:
                miss = (r.status, (await r.json())["error"]["message"])
    finally:
        await runner.cleanup()
    return keys, explained, miss, store.entries()


@given(case=cases())
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_use_of_the_key_agrees(case: Case, upstream: FakeUpstream, bg: BackgroundLoop):
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "seedproxy.toml"
        config.write_text(toml(case.rules))
        flags = {"upstream.base_url": upstream.url + "/v1"}
        settings_ = load_settings(config, {}, flags)
        times = 2 if case.rules["repeat"] == "sequence" else 1
        keys, explained, (status, message), entries = bg.run(
            through_the_app(settings_, case, times)
        )

        # a live request, explain, and (with sequence) its repeats
        assert explained == keys[0]
        assert len(set(keys)) == times
        # the replay miss's nearest recording: the same request, one field apart
        assert status == 504
        assert any(f"(key {k}) differs in: zz_probe (" in message for k in keys), message

        # its recording, written to a cassette and loaded again
        ns = namespace_of(CIMultiDict(case.headers), settings_.cache.scope)
        header = case.headers.get("X-Seedproxy-Seed-Mode")
        repeats = cassette.Repeats(settings_)
        by_key = {e.key: e for e in entries}
        data = cassette.dumps(
            cassette.interaction(by_key[k], settings_, case.query, ns, header, repeats)
            for k in keys
        )
        assert len(orjson.loads(data)["interactions"]) == times
        assert [r.entry.key for r in cassette.loads(data, settings_, one_per_key=True)] == keys
        assert b"abc123" not in data and b"xyz789" not in data  # credentials: always
        assert SECRET_A.encode() not in data or not case.rules["builtin"]

        # seedproxy key, offline, with the same config (per-key scope needs a credential)
        if case.rules["scope"] == "shared":
            request = Path(tmp) / "request.json"
            request.write_bytes(orjson.dumps(case.body))
            args = [
                "key",
                str(request),
                "--config",
                str(config),
                "--upstream",
                flags["upstream.base_url"],
                "--query",
                case.query,
                "--namespace",
                ns,
                "--json",
            ]
            if header is not None:
                args += ["--seed-mode", header]
            shown = CliRunner().invoke(main, args, env={"SEEDPROXY_CONFIG": ""})
            assert shown.exit_code == 0, shown.output
            assert orjson.loads(shown.stdout)["key"] == keys[0]
