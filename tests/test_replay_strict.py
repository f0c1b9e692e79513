"""Replay is offline whatever a request says, and its misses tell the truth."""

from __future__ import annotations

import openai
import pytest

from proxy.answers import NEAREST_SCAN
from proxy.config import load_settings
from proxy.run import Session
from proxy.runmodes import RunMode
from tests.conftest import sdk
from tests.test_chat import create
from tests.test_tools import cli

pytestmark = pytest.mark.every_store


def miss(client: openai.OpenAI, **kw) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as err:
        create(client, **kw)
    assert err.value.status_code == 504 and err.value.code == "cache_miss"
    return err.value


@pytest.mark.parametrize("directive", ["no-cache", "no-store", "no-cache, max-age=0"])
def test_a_directive_that_needs_the_network_is_refused_in_replay(make_proxy, upstream, directive):
    with sdk(make_proxy()) as client:
        create(client)  # recorded
    calls = len(upstream.chat_calls)
    with sdk(make_proxy(cache={"mode": "replay"})) as offline:
        err = miss(offline, extra_headers={"Cache-Control": directive})
        assert "replay mode" in err.message and "Cache-Control: no-" in err.message
        assert create(offline)[0]["x-cache"] == "HIT"  # without it, the recording is served
    assert len(upstream.chat_calls) == calls  # nothing reached the upstream


def test_server_side_state_is_refused_in_replay(make_proxy, upstream):
    with (
        sdk(make_proxy(cache={"mode": "replay"})) as offline,
        pytest.raises(openai.APIStatusError) as err,
    ):
        offline.responses.create(model="gpt-test", input="hi", background=True)
    assert err.value.status_code == 504 and "never records one" in err.value.message
    assert upstream.calls == []  # a chain (previous_response_id) replays: tests/test_chains.py


def test_only_if_cached_in_record_mode_does_not_claim_replay_mode(proxy, upstream):
    with sdk(proxy) as client:
        err = miss(client, extra_headers={"Cache-Control": "only-if-cached"})
    assert "replay mode" not in err.message
    assert "only-if-cached" in err.message and "without only-if-cached" in err.message
    assert upstream.calls == []


def test_a_body_recorded_under_another_upstream_is_named(make_proxy, upstream, bg):
    recorder = make_proxy()
    with sdk(recorder) as client:
        create(client)
    recorder.stop()  # its notes written, as they are within a second anyway
    # the same body, another base URL: another key, but the miss says why
    other = make_proxy(cache={"mode": "replay"}, upstream={"base_url": "http://127.0.0.1:9/v1"})
    with sdk(other) as offline:
        err = miss(offline)
    assert "same body is recorded" in err.message and "upstream" in err.message


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_an_imported_recording_is_named_by_a_replay_miss(make_proxy, cache_dir, tmp_path, upstream):
    with sdk(make_proxy()) as client:
        create(client)
    cassette, fresh = tmp_path / "c.json", tmp_path / "fresh"
    env = {"SEEDPROXY_UPSTREAM_BASE_URL": f"{upstream.url}/v1"}  # the proxy's, keys and all
    assert cli("export", str(cassette), "--cache-dir", str(cache_dir), env=env).returncode == 0
    assert cli("import", str(cassette), "--cache-dir", str(fresh), env=env).returncode == 0
    replayer = make_proxy(cache={"mode": "replay", "dir": str(fresh)})
    with sdk(replayer) as offline:
        assert create(offline)[0]["x-cache"] == "HIT"
        err = miss(offline, messages=[{"role": "user", "content": "Say goodbye"}])
    assert "differs in: messages[0].content" in err.message


def test_a_cassette_miss_names_its_own_recording_right_after_a_busy_segment(
    tmp_path, upstream, bg, monkeypatch
):
    """What the segment before recorded is indexed when it ends, while the store still holds
    it: its twenty keys never crowd the next cassette's own out of the nearest ones, even
    before the once-a-second flush (here: never) would have written them."""
    monkeypatch.setattr("proxy.app.FLUSH_INTERVAL", 3600.0)
    settings = load_settings(None, {}, {"upstream.base_url": upstream.url + "/v1"})
    session = Session(settings, cassettes=True)
    mine, busy = tmp_path / "mine.json", tmp_path / "busy.json"

    async def ask(content: str) -> str:
        async with openai.AsyncOpenAI(
            base_url=session.base_url, api_key="x", max_retries=0
        ) as client:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-test", messages=[{"role": "user", "content": content}]
                )
            except openai.APIStatusError as err:
                assert err.status_code == 504 and err.code == "cache_miss"
                return err.message
            return raw.headers["x-seedproxy-key"]

    async def scenario() -> tuple[str, str]:
        await session.start()
        try:
            await session.begin(mine, RunMode.RECORD)
            key = await ask("Name a colour")
            await session.end()
            await session.begin(busy, RunMode.RECORD)
            for n in range(NEAREST_SCAN):
                await ask(f"question {n}")
            await session.end()
            await session.begin(mine, RunMode.REPLAY)
            message = await ask("Name a color")
            await session.end()
            return key, message
        finally:
            await session.stop()

    key, message = bg.run(scenario())
    assert f"(key {key}) differs in: messages[0].content" in message
