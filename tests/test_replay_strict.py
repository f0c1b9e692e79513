"""Replay is offline whatever a request says, and its misses tell the truth."""

from __future__ import annotations

import openai
import pytest

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
