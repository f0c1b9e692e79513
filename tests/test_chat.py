"""POST /v1/chat/completions through the official openai SDK, sync and async."""

from __future__ import annotations

import asyncio
import threading

import openai
import orjson
import pytest

from tests.conftest import async_sdk, sdk
from tests.harness import FAKE_KEY, stored_bytes, until_async

pytestmark = pytest.mark.every_store

MESSAGES = [{"role": "user", "content": "Say hello"}]


def create(client, **kw):
    args = {"model": "gpt-test", "messages": MESSAGES} | kw
    raw = client.chat.completions.with_raw_response.create(**args)
    return raw.headers, raw.parse()


def test_second_identical_call_is_a_hit_without_upstream_call(client, upstream, proxy):
    h1, c1 = create(client)
    h2, c2 = create(client)
    assert (h1["x-cache"], h2["x-cache"]) == ("MISS", "HIT")
    assert c1.choices[0].message.content == c2.choices[0].message.content
    assert c1.id == c2.id
    assert len(upstream.chat_calls) == 1
    assert h2["x-seedproxy-key"] == h1["x-seedproxy-key"]
    assert h2["x-seedproxy-fingerprint"] == "fp_one"
    assert int(h2["age"]) < 60
    proxy.pipeline.clock.advance(100)
    assert 100 <= int(create(client)[0]["age"]) < 160  # seconds since it was stored


async def test_async_sdk_hit(proxy, upstream):
    async with async_sdk(proxy) as client:
        first = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=MESSAGES
        )
        second = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=MESSAGES
        )
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert len(upstream.chat_calls) == 1


def test_canonically_equal_requests_share_an_entry(client, upstream):
    create(client, temperature=1.0)
    headers, _ = create(client, temperature=1, user="someone", metadata={"run": "2"})
    assert headers["x-cache"] == "HIT"
    headers, _ = create(client, temperature=0.5)
    assert headers["x-cache"] == "MISS"
    assert len(upstream.chat_calls) == 2


def test_seed_injected_when_absent_and_client_seed_kept(client, upstream):
    headers, _ = create(client)
    assert upstream.chat_calls[-1].json()["seed"] == 12345
    assert headers["x-seedproxy-seed"] == "12345"
    headers, _ = create(client, seed=7)
    assert upstream.chat_calls[-1].json()["seed"] == 7
    assert headers["x-seedproxy-seed"] == "7"


def test_override_mode_replaces_client_seed(make_proxy, upstream):
    proxy = make_proxy(seed={"mode": "override", "default": 99})
    with sdk(proxy) as client:
        headers, _ = create(client, seed=7)
    assert upstream.chat_calls[-1].json()["seed"] == 99
    assert headers["x-seedproxy-seed"] == "99"


def test_passthrough_seed_mode_leaves_it_absent(make_proxy, upstream):
    proxy = make_proxy(seed={"mode": "passthrough"})
    with sdk(proxy) as client:
        headers, _ = create(client)
    assert "seed" not in upstream.chat_calls[-1].json()
    assert "x-seedproxy-seed" not in headers


def test_require_mode_without_seed_is_bad_request(make_proxy, upstream):
    proxy = make_proxy(seed={"mode": "require"})
    with sdk(proxy) as client:
        with pytest.raises(openai.BadRequestError) as err:
            create(client)
        assert err.value.code == "missing_seed"
        headers, _ = create(client, seed=3)
    assert headers["x-seedproxy-seed"] == "3"
    assert len(upstream.chat_calls) == 1


@pytest.mark.parametrize("seed", [True, 1.5, "7", 2**63])
def test_invalid_seeds_are_rejected(client, upstream, seed):
    with pytest.raises(openai.BadRequestError) as err:
        create(client, seed=seed)
    assert err.value.status_code == 400
    assert err.value.code == "invalid_seed"
    assert err.value.param == "seed"
    assert upstream.chat_calls == []


async def test_invalid_seed_async(proxy, upstream):
    async with async_sdk(proxy) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="gpt-test", messages=MESSAGES, seed="7")


def test_replay_serves_offline_without_key_and_misses_fail_fast(bg, make_proxy, upstream):
    recorder = make_proxy()
    with sdk(recorder) as client:
        _, recorded = create(client)
    recorder.stop()
    bg.run(upstream.stop())
    replayer = make_proxy(cache={"mode": "replay"})
    # CI has no key: the SDK insists on some string, the proxy needs none
    with openai.OpenAI(base_url=replayer.base_url, api_key="none") as offline:
        headers, replayed = create(offline)
        assert headers["x-cache"] == "HIT"
        assert replayed.choices[0].message.content == recorded.choices[0].message.content
        with pytest.raises(openai.APIStatusError) as err:
            create(offline, messages=[{"role": "user", "content": "never recorded"}])
    assert err.value.status_code == 504
    assert err.value.code == "cache_miss"
    assert err.value.response.headers["x-should-retry"] == "false"
    assert "replay mode" in err.value.message and "record" in err.value.message
    # the SDK's default of 2 retries was not used: the proxy saw a single attempt
    assert replayer.counters["replay_misses"] == 1
    assert len(upstream.chat_calls) == 1


def test_cache_control_directives(client, upstream, proxy):
    create(client)
    raw = client.chat.completions.with_raw_response
    # no-cache: go live, compare and store
    r = raw.create(model="gpt-test", messages=MESSAGES, extra_headers={"Cache-Control": "no-cache"})
    assert r.headers["x-cache"] == "REFRESH" and len(upstream.chat_calls) == 2
    # no-store: go live, store nothing
    other = [{"role": "user", "content": "not to be stored"}]
    r = raw.create(model="gpt-test", messages=other, extra_headers={"Cache-Control": "no-store"})
    assert r.headers["x-cache"] == "BYPASS"
    assert create(client, messages=other)[0]["x-cache"] == "MISS"
    # only-if-cached: replay for this request
    unseen = [{"role": "user", "content": "unseen"}]
    with pytest.raises(openai.APIStatusError) as err:
        raw.create(
            model="gpt-test", messages=unseen, extra_headers={"Cache-Control": "only-if-cached"}
        )
    assert err.value.code == "cache_miss"
    r = raw.create(
        model="gpt-test", messages=MESSAGES, extra_headers={"Cache-Control": "only-if-cached"}
    )
    assert r.headers["x-cache"] == "HIT"
    # max-age: an entry older than that is not accepted
    calls = len(upstream.chat_calls)
    young = {"Cache-Control": "max-age=10"}
    assert (
        raw.create(model="gpt-test", messages=MESSAGES, extra_headers=young).headers["x-cache"]
        == "HIT"
    )
    proxy.pipeline.clock.advance(11)
    r = raw.create(model="gpt-test", messages=MESSAGES, extra_headers=young)
    assert r.headers["x-cache"] == "MISS" and len(upstream.chat_calls) == calls + 1
    r = raw.create(
        model="gpt-test", messages=MESSAGES, extra_headers={"Cache-Control": "max-age=3600"}
    )
    assert r.headers["x-cache"] == "HIT"


def test_passthrough_mode_never_stores(make_proxy, upstream):
    proxy = make_proxy(cache={"mode": "passthrough"})
    with sdk(proxy) as client:
        assert create(client)[0]["x-cache"] == "BYPASS"
        assert create(client)[0]["x-cache"] == "BYPASS"
    assert len(upstream.chat_calls) == 2


def test_refresh_mode_records_drift_with_a_diff(make_proxy, upstream, logs):
    recorder = make_proxy()
    with sdk(recorder) as client:
        create(client)
    recorder.stop()
    upstream.nondeterministic = True
    refresher = make_proxy(cache={"mode": "refresh"})
    with sdk(refresher) as client:
        headers, _ = create(client)
    assert headers["x-cache"] == "REFRESH"
    events = orjson.loads(_get(refresher, "/_seedproxy/drift"))["drift"]
    assert len(events) == 1
    event = events[0]
    assert event["reason"] == "refresh"
    assert event["same_fingerprint"] is True
    assert event["cached_fingerprint"] == event["live_fingerprint"] == "fp_one"
    assert event["seed"] == 12345 and event["model"] == "gpt-test"
    assert event["diff"].startswith("--- cached\n+++ live")
    assert 0 <= event["similarity"] < 1
    lines = [orjson.loads(x) for x in logs.text.splitlines()]
    warnings = [x for x in lines if x["level"] == "warning" and x["msg"] == "drift"]
    assert len(warnings) == 1 and warnings[0]["key"] == event["key"]


def test_refresh_without_difference_records_nothing(make_proxy, upstream):
    proxy = make_proxy()
    with sdk(proxy) as client:
        create(client)
        create(client, extra_headers={"Cache-Control": "no-cache"})
    assert orjson.loads(_get(proxy, "/_seedproxy/drift"))["drift"] == []


def test_latest_policy_follows_a_fingerprint_change(make_proxy, upstream, logs):
    proxy = make_proxy(cache={"fingerprint": "latest"})
    other = [{"role": "user", "content": "another prompt"}]
    with sdk(proxy) as client:
        assert create(client)[0]["x-seedproxy-fingerprint"] == "fp_one"
        upstream.fingerprint = "fp_two"
        # any live call for the model reveals the new fingerprint
        assert create(client, messages=other)[0]["x-seedproxy-fingerprint"] == "fp_two"
        headers, _ = create(client)
        assert headers["x-cache"] == "MISS"
        assert headers["x-seedproxy-fingerprint"] == "fp_two"
        assert create(client)[0]["x-cache"] == "HIT"
    variants = proxy.bg.run(proxy.pipeline.store.variants(headers["x-seedproxy-key"]))
    assert sorted(v.fingerprint for v in variants) == ["fp_one", "fp_two"]
    changes = orjson.loads(_get(proxy, "/_seedproxy/drift"))["fingerprint_changes"]
    assert [(c["model"], c["previous"], c["fingerprint"]) for c in changes] == [
        ("gpt-test", "fp_one", "fp_two")
    ]
    assert '"msg":"fingerprint change"' in logs.text
    # the old entry was compared with the new answer: a drift event across fingerprints
    drift = orjson.loads(_get(proxy, "/_seedproxy/drift"))["drift"]
    assert [(d["reason"], d["same_fingerprint"]) for d in drift] == [("fingerprint", False)]


def test_registry_updates_not_yet_written_still_count(make_proxy, upstream, monkeypatch):
    """Sightings and recent keys are written once a second; until then this process's
    lookups and replay-miss explanations use what it gathered."""
    monkeypatch.setattr("proxy.app.FLUSH_INTERVAL", 3600)
    monkeypatch.setattr("proxy.registry.SIGHTINGS_TTL", 0)  # every lookup reads the store
    proxy = make_proxy(cache={"fingerprint": "latest"})
    other = [{"role": "user", "content": "another prompt"}]
    with sdk(proxy) as client:
        create(client)
        _get(proxy, "/_seedproxy/stats")  # reports write them first
        assert proxy.bg.run(proxy.pipeline.store.recent("/v1/chat/completions", "gpt-test"))
        upstream.fingerprint = "fp_two"
        create(client, messages=other)  # fp_two seen live, not written yet
        key = create(client, messages=other)[0]["x-seedproxy-key"]
        assert proxy.bg.run(proxy.pipeline.store.sightings("gpt-test")).keys() == {"fp_one"}
        headers, _ = create(client)  # latest is fp_two: the fp_one answer is not served
        assert (headers["x-cache"], headers["x-seedproxy-fingerprint"]) == ("MISS", "fp_two")
        with pytest.raises(openai.APIStatusError) as err:
            create(
                client,
                messages=other,
                temperature=0.3,
                extra_headers={"Cache-Control": "only-if-cached"},
            )
        assert f"(key {key}) differs in: temperature" in err.value.message
    _get(proxy, "/_seedproxy/stats")
    assert proxy.bg.run(proxy.pipeline.store.sightings("gpt-test")).keys() == {"fp_one", "fp_two"}


def test_current_policy_drops_a_fingerprint_after_the_window(make_proxy, upstream):
    proxy = make_proxy(cache={"fingerprint": "current", "fingerprint_window": 60.0})
    with sdk(proxy) as client:
        create(client)
        upstream.fingerprint = "fp_two"
        create(client, messages=[{"role": "user", "content": "b"}])
        # both fingerprints are live within the window: the fp_one entry is still served
        assert create(client)[0]["x-cache"] == "HIT"
        proxy.pipeline.clock.advance(61)
        create(client, messages=[{"role": "user", "content": "c"}])  # fp_two seen live again
        headers, _ = create(client)
        assert headers["x-cache"] == "MISS"
        assert headers["x-seedproxy-fingerprint"] == "fp_two"
    assert len(upstream.chat_calls) == 4


def test_current_policy_serves_when_nothing_is_live(make_proxy, upstream):
    proxy = make_proxy(cache={"fingerprint": "current", "fingerprint_window": 60.0})
    with sdk(proxy) as client:
        create(client)
        proxy.pipeline.clock.advance(61)
        assert create(client)[0]["x-cache"] == "HIT"


def test_restart_keeps_entries_and_the_registry(make_proxy, upstream):
    proxy = make_proxy(cache={"fingerprint": "latest"})
    other = [{"role": "user", "content": "another prompt"}]
    with sdk(proxy) as client:
        create(client)
        upstream.fingerprint = "fp_two"
        create(client, messages=other)
    proxy.restart()
    with sdk(proxy) as client:
        assert create(client, messages=other)[0]["x-cache"] == "HIT"
        # the registry survived: fp_two is still the latest, so the fp_one entry is stale
        assert create(client)[0]["x-cache"] == "MISS"
    assert len(upstream.chat_calls) == 3


async def test_fifty_concurrent_identical_misses_make_one_upstream_call(proxy, upstream):
    upstream.gate = threading.Event()  # held until all 49 others are seen waiting
    async with async_sdk(proxy, max_retries=0) as client:
        calls = [
            asyncio.ensure_future(
                client.chat.completions.create(model="gpt-test", messages=MESSAGES)
            )
            for _ in range(50)
        ]
        # the holder's call has reached the upstream (held there) and the 49 others wait
        await until_async(lambda: proxy.counters["coalesced"] == 49 and upstream.chat_calls)
        assert len(upstream.chat_calls) == 1 and not any(c.done() for c in calls)
        upstream.gate.set()
        results = await asyncio.gather(*calls)
    assert len(upstream.chat_calls) == 1
    assert len({r.id for r in results}) == 1
    assert len({r.choices[0].message.content for r in results}) == 1
    assert proxy.counters["coalesced"] == 49


async def test_a_client_that_hangs_up_mid_miss_stops_neither_the_store_nor_who_waits(
    proxy, upstream
):
    upstream.gate = threading.Event()  # the upstream answers once the first has hung up
    async with (
        async_sdk(proxy, max_retries=0, timeout=0.5) as leaving,
        async_sdk(proxy, max_retries=0) as waiting,
    ):
        first = asyncio.ensure_future(
            leaving.chat.completions.create(model="gpt-test", messages=MESSAGES)
        )
        await until_async(lambda: len(upstream.chat_calls) == 1)
        pending = asyncio.ensure_future(
            waiting.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        )
        await until_async(lambda: proxy.counters["coalesced"] == 1)  # the second is waiting
        with pytest.raises(openai.APITimeoutError):
            await first  # it hung up while the upstream call was under way
        assert not pending.done()
        upstream.gate.set()
        second = await pending
        assert second.headers["x-cache"] == "MISS"
        third = await waiting.chat.completions.with_raw_response.create(
            model="gpt-test", messages=MESSAGES
        )
    assert third.headers["x-cache"] == "HIT"
    assert third.parse().id == second.parse().id
    assert len(upstream.chat_calls) == 1
    assert proxy.counters["coalesced"] == 1


async def test_a_quiet_moment_is_when_a_request_has_gone_upstream(proxy, upstream):
    """The store's housekeeping that slows what runs meanwhile (a checkpoint's syncs)
    starts as a request goes upstream, its answer a round trip away; or after a while."""
    upstream.latency = 0.5
    quiet = asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(
            proxy.pipeline.fetcher.traffic.quiet_moment(10), proxy.bg.loop
        )
    )
    await asyncio.sleep(0.1)
    assert not quiet.done()  # nothing went upstream
    async with async_sdk(proxy, max_retries=0) as client:
        answer = asyncio.ensure_future(
            client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        )
        await asyncio.wait_for(quiet, 5)
        assert not answer.done()  # its answer is still to come
        await answer
    proxy.bg.run(
        proxy.pipeline.fetcher.traffic.quiet_moment(0.05), timeout=5
    )  # no traffic: not for long


def test_upstream_errors_pass_through_and_are_never_cached(client, upstream):
    from tests.upstream import Scripted

    upstream.script(Scripted(429, headers={"Retry-After": "7"}))
    with pytest.raises(openai.RateLimitError) as err:
        client.with_options(max_retries=0).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    assert err.value.response.headers["retry-after"] == "7"
    assert err.value.response.json() == {
        "error": {"message": "scripted 429", "type": "server_error", "param": None, "code": None}
    }
    upstream.script(Scripted(500))
    with pytest.raises(openai.InternalServerError):
        client.with_options(max_retries=0).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    assert create(client)[0]["x-cache"] == "MISS"
    assert len(upstream.chat_calls) == 3


def test_malformed_upstream_json_is_502_and_not_cached(client, upstream):
    from tests.upstream import Scripted

    upstream.script(Scripted(200, body=b'{"choices": [tru'))
    with pytest.raises(openai.InternalServerError) as err:
        client.with_options(max_retries=0).chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    assert err.value.status_code == 502
    assert create(client)[0]["x-cache"] == "MISS"


def test_planted_key_never_reaches_cache_or_logs(make_proxy, upstream, store_config, logs):
    from tests.upstream import Scripted

    proxy = make_proxy(cache={"mode": "record"}, log={"level": "debug"})
    with sdk(proxy) as client:
        create(client)
        create(client)
        upstream.nondeterministic = True
        create(client, extra_headers={"Cache-Control": "no-cache"})
        upstream.script(Scripted(401))
        with pytest.raises(openai.AuthenticationError):
            create(client, messages=[{"role": "user", "content": "x"}])
        client.models.list()
    proxy.stop()
    assert upstream.chat_calls[0].headers["Authorization"] == f"Bearer {FAKE_KEY}"
    stored = stored_bytes(store_config)
    assert any(b"Say hello" in blob for blob in stored)  # the entries are in there
    for blob in stored:
        assert FAKE_KEY.encode() not in blob
    assert logs.text and FAKE_KEY not in logs.text


def _get(proxy, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(proxy.url + path, timeout=10) as response:
        return response.read()
