"""Issue 30, item 3: Responses chains replay. ``previous_response_id`` names an immutable
response, so such requests are keyed (the id included) and recorded like any other, and
the recorded ids are replayed as recorded: a chain replays offline in order.
``conversation`` requests are recorded per occurrence; ``background: true`` stays live.
Driven as users do: the openai SDK and an openai-agents run, under ``seedproxy run
--cassette``, the pytest plugin and a plain ``seedproxy serve`` with the disk store, each
recorded and then replayed with the upstream stopped."""

from __future__ import annotations

import subprocess
import sys
import time

import openai
import orjson
import pytest

from proxy import cassette
from proxy.config import load_settings
from tests.conftest import sdk
from tests.harness import FAKE_KEY, Serve, clean_env, free_port
from tests.test_plugin import PLUGIN
from tests.test_run import seedproxy_run  # noqa: F401  (a fixture)

CHAIN = """
import openai

client = openai.OpenAI()
previous = None
for question in ["one", "two", "three"]:
    if question == "two":  # streamed: a chain link may be either
        with client.responses.stream(
            model="gpt-test", input=question, previous_response_id=previous
        ) as stream:
            answer = stream.get_final_response()
    else:
        answer = client.responses.create(
            model="gpt-test", input=question, previous_response_id=previous
        )
    print(answer.id, answer.previous_response_id, answer.output_text.replace("\\n", " "))
    previous = answer.id
"""

AGENT = """
import asyncio

import openai
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

set_tracing_disabled(True)


@function_tool
def forecast(city: str, days: int) -> str:
    return f"sunny in {city} for {days} days"


async def main():
    client = openai.AsyncOpenAI()
    agent = Agent(
        name="weather",
        instructions="Answer with the forecast.",
        model=OpenAIResponsesModel("gpt-test", client),
        tools=[forecast],
    )
    first = await Runner.run(agent, "Weather in Paris?", auto_previous_response_id=True)
    print(first.last_response_id, first.final_output.replace("\\n", " "))
    second = await Runner.run(
        agent, "And in Rome?", previous_response_id=first.last_response_id
    )
    print(second.last_response_id, second.final_output.replace("\\n", " "))


asyncio.run(main())
"""

# The chain, then the agent, in one program: one start of Python and of the SDK for both.
BOTH = CHAIN + AGENT
CHAIN_LINES = 3  # what the chain prints: one line per answer; then the agent's


def responses_calls(upstream) -> list[dict]:
    return [c.json() for c in upstream.calls if c.path == "/v1/responses"]


def links(stdout: str) -> list[list[str]]:
    return [line.split(" ", 2) for line in stdout.splitlines()]


# -- previous_response_id --------------------------------------------------------------------


def ask_chain(client: openai.OpenAI, questions: list[str]) -> list:
    answers, previous = [], None
    for question in questions:
        raw = client.responses.with_raw_response.create(
            model="gpt-test", input=question, previous_response_id=previous
        )
        answers.append(raw)
        previous = raw.parse().id
    return answers


def test_a_chain_is_recorded_and_replays_offline_in_order(make_proxy, upstream, bg):
    proxy = make_proxy()
    with sdk(proxy) as client:
        recorded = ask_chain(client, ["one", "two", "three"])
        assert [r.headers["x-cache"] for r in recorded] == ["MISS"] * 3
        again = ask_chain(client, ["one", "two", "three"])  # the recorded ids lead the way
    assert [r.headers["x-cache"] for r in again] == ["HIT"] * 3
    sent = responses_calls(upstream)
    ids = [r.parse().id for r in recorded]
    assert [s.get("previous_response_id") for s in sent] == [None, *ids[:2]]
    # each link answered after what came before it: the chain reached the upstream as one
    assert len({r.parse().output_text for r in recorded}) == 3

    bg.run(upstream.stop())
    proxy.restart(cache={"mode": "replay"})
    with sdk(proxy, max_retries=0) as client:
        replayed = ask_chain(client, ["one", "two", "three"])
        assert [r.headers["x-cache"] for r in replayed] == ["HIT"] * 3
        assert [r.parse().id for r in replayed] == ids
        assert [r.parse().output_text for r in replayed] == [
            r.parse().output_text for r in recorded
        ]
        # the id is part of the key: another chain's link is not this one's answer
        with pytest.raises(openai.APIStatusError) as miss:
            client.responses.create(model="gpt-test", input="two", previous_response_id="resp_x")
    assert miss.value.status_code == 504
    assert "previous_response_id" in miss.value.message


def test_an_unknown_previous_response_is_the_upstreams_error_and_not_stored(proxy, upstream):
    with sdk(proxy, max_retries=0) as client:
        for _ in range(2):
            with pytest.raises(openai.BadRequestError) as error:
                client.responses.create(
                    model="gpt-test", input="two", previous_response_id="resp_gone"
                )
            assert error.value.code == "previous_response_not_found"
    assert len(responses_calls(upstream)) == 2


def test_a_chain_replays_through_seedproxy_run_with_the_sdk_and_openai_agents(
    seedproxy_run,  # noqa: F811
    tmp_path,
    upstream,
    bg,
):
    (tmp_path / "chains.py").write_text(BOTH)
    tape = tmp_path / "chains.json"
    recorded, summary = seedproxy_run("--cassette", str(tape), "--", sys.executable, "chains.py")
    assert recorded.returncode == 0, recorded.stderr
    assert summary is not None and summary["mode"] == "record"
    interactions = orjson.loads(tape.read_bytes())["interactions"]
    assert summary["recorded"] == len(interactions)
    ids = [i["response"]["body"]["id"] for i in interactions]
    previous = [i["request"].get("previous_response_id") for i in interactions]
    assert all(p is None or p in ids for p in previous) and any(previous)
    assert all("key" not in i for i in interactions)  # keys are computed again on load
    printed = links(recorded.stdout)
    chain, agent = printed[:CHAIN_LINES], printed[CHAIN_LINES:]
    assert [link[1] for link in chain] == ["None", chain[0][0], chain[1][0]]
    assert len(agent) == 2  # its two runs
    agent_requests = responses_calls(upstream)[CHAIN_LINES:]
    assert any(r.get("previous_response_id") for r in agent_requests)  # the agent chained
    assert any(  # and went through its tool
        item.get("type") == "function_call_output"
        for r in agent_requests
        if isinstance(r["input"], list)
        for item in r["input"]
    )

    bg.run(upstream.stop())
    replayed, summary = seedproxy_run(
        "--cassette", str(tape), "--", sys.executable, "chains.py", key=None
    )
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == recorded.stdout
    assert summary is not None
    assert (summary["mode"], summary["hits"], summary["live_calls"]) == (
        "replay",
        len(interactions),
        0,
    )
    assert summary["unused_recordings"] == [] and not summary["written"]


PLUGIN_SUITE = """
import os
import pathlib

import openai
import pytest


@pytest.mark.seedproxy
def test_chain():
    client = openai.OpenAI()
    previous, ids = None, []
    for question in ["one", "two", "three"]:
        answer = client.responses.create(
            model="gpt-test", input=question, previous_response_id=previous
        )
        assert answer.previous_response_id == previous
        previous = answer.id
        ids.append(answer.id)
    pathlib.Path(os.environ["IDS"]).write_text(" ".join(ids))
"""


def test_a_chain_replays_under_the_pytest_plugin(pytester, upstream, bg, monkeypatch):
    pytester.makepyfile(test_chain=PLUGIN_SUITE)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    upstream_url = f"{upstream.url}/v1"

    def run(mode: str) -> str:
        ids = pytester.path / f"{mode}.ids"
        monkeypatch.setenv("IDS", str(ids))
        result = pytester.runpytest_subprocess(
            *PLUGIN, "--seedproxy-upstream", upstream_url, "--seedproxy-mode", mode, timeout=180
        )
        result.assert_outcomes(passed=1)
        return ids.read_text()

    recorded = run("record")
    assert len(responses_calls(upstream)) == 3
    bg.run(upstream.stop())
    monkeypatch.delenv("OPENAI_API_KEY")
    assert run("replay") == recorded


def test_chains_replay_from_a_plain_serve_with_the_disk_store(tmp_path, upstream, bg):
    (tmp_path / "chains.py").write_text(BOTH)
    cache_dir, port = tmp_path / "cache", free_port()
    env = clean_env() | {
        "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "OPENAI_API_KEY": FAKE_KEY,
    }
    outputs: list[str] = []
    for mode in ("record", "replay"):
        served = Serve(port, upstream, {}, "--cache-dir", str(cache_dir), "--mode", mode)
        try:
            result = subprocess.run(
                [sys.executable, "chains.py"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout)
        finally:
            served.stop()
        bg.run(upstream.stop())  # the replay is offline: nothing answers there
    recorded, replayed = outputs
    assert replayed == recorded
    assert len(links(recorded)) == CHAIN_LINES + 2  # the chain's three, the agent's two


# -- conversation ----------------------------------------------------------------------------


def test_conversation_requests_are_recorded_per_occurrence_and_replayed_in_order(
    make_proxy, upstream, bg
):
    proxy = make_proxy()  # cache.repeat = "same": a conversation is counted all the same
    ask = {"model": "gpt-test", "input": "and then?", "conversation": "conv_1"}
    with sdk(proxy) as client:
        recorded = [client.responses.with_raw_response.create(**ask) for _ in range(3)]
    assert [r.headers["x-cache"] for r in recorded] == ["MISS"] * 3
    texts = [r.parse().output_text for r in recorded]
    assert len(set(texts)) == 3  # the conversation grew: each answer is its own

    bg.run(upstream.stop())
    proxy.restart(cache={"mode": "replay"})
    with sdk(proxy, max_retries=0) as client:
        replayed = [client.responses.with_raw_response.create(**ask) for _ in range(3)]
        assert [r.headers["x-cache"] for r in replayed] == ["HIT"] * 3
        assert [r.parse().output_text for r in replayed] == texts
        assert [r.parse().id for r in replayed] == [r.parse().id for r in recorded]
        with pytest.raises(openai.APIStatusError) as miss:
            client.responses.create(**ask)
    assert miss.value.status_code == 504
    assert "3 answers were recorded" in miss.value.message
    assert "conversation is recorded once per occurrence" in miss.value.message
    assert "cache.repeat" not in miss.value.message


def test_conversation_hits_are_never_verified_live(make_proxy, upstream):
    proxy = make_proxy(cache={"verify_rate": 1.0})
    ask = {"model": "gpt-test", "input": "more", "conversation": "conv_v"}
    plain = {"model": "gpt-test", "input": "more"}
    with sdk(proxy) as client:
        client.responses.create(**ask)
        client.responses.create(**plain)
    proxy.restart()  # counts from the first occurrence again: the next one is a hit
    with sdk(proxy) as client:
        for body in (ask, plain):  # the plain hit is verified, after the conversation's
            assert client.responses.with_raw_response.create(**body).headers["x-cache"] == "HIT"
    deadline = time.monotonic() + 30
    while len(responses_calls(upstream)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)  # waits for the plain hit's verification; decides nothing
    assert [c.get("conversation") for c in responses_calls(upstream)] == [
        "conv_v",
        None,
        None,
    ]
    assert len(upstream.conversations["conv_v"]) == 2  # its question and one answer


def test_conversation_occurrences_survive_a_cassette_and_count_per_segment(
    seedproxy_run,  # noqa: F811
    tmp_path,
    upstream,
    bg,
):
    program = tmp_path / "conversation.py"
    program.write_text(
        "import openai\n"
        "client = openai.OpenAI()\n"
        "for _ in range(2):\n"
        "    r = client.responses.create(model='gpt-test', input='go on', conversation='c1')\n"
        "    print(r.id, r.output_text.replace('\\n', ' '))\n"
    )
    tape = tmp_path / "conversation.json"
    recorded, summary = seedproxy_run("--cassette", str(tape), "--", sys.executable, program.name)
    assert recorded.returncode == 0, recorded.stderr
    assert summary is not None and summary["recorded"] == 2
    interactions = orjson.loads(tape.read_bytes())["interactions"]
    assert all("key" not in i for i in interactions)  # occurrences numbered again on load
    bg.run(upstream.stop())
    for _ in range(2):  # each run counts from the first occurrence again
        replayed, summary = seedproxy_run(
            "--cassette", str(tape), "--", sys.executable, program.name, key=None
        )
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout == recorded.stdout
        assert summary is not None and (summary["hits"], summary["live_calls"]) == (2, 0)


def test_a_cassettes_conversation_interactions_get_occurrence_keys():
    settings = load_settings(None, {}, {})
    request = {"model": "gpt-test", "input": "x", "conversation": {"id": "conv_1"}}
    plain = {"model": "gpt-test", "input": "x"}

    def interaction(body: dict, n: int) -> dict:
        return {
            "endpoint": "/v1/responses",
            "recorded_at": "2026-01-31T12:00:00.000000Z",
            "request": body,
            "response": {
                "status": 200,
                "content_type": "application/json",
                "body": {"id": f"resp_{n}", "output": []},
            },
        }

    document = {
        "version": 2,
        "interactions": [interaction(request, 0), interaction(request, 1), interaction(plain, 2)],
    }
    loaded = cassette.loads(orjson.dumps(document), settings)
    keys = [r.entry.key for r in loaded]
    assert len(set(keys)) == 3
    repeats = cassette.Repeats(settings)
    written = [cassette.interaction(r.entry, settings, repeats=repeats) for r in loaded]
    assert all("key" not in w for w in written)  # computed again, in file order
    as_lines = cassette.loads(cassette.dumps_lines(written), settings)  # JSON Lines alike
    assert [r.entry.key for r in as_lines] == keys


# -- background ------------------------------------------------------------------------------


def test_background_responses_stay_live_and_their_replay_miss_says_why(make_proxy, upstream):
    proxy = make_proxy()
    body = {"model": "gpt-test", "input": "a long job", "background": True}
    with sdk(proxy) as client:
        labels = [client.responses.with_raw_response.create(**body) for _ in range(2)]
    assert [r.headers["x-cache"] for r in labels] == ["BYPASS"] * 2
    assert len(responses_calls(upstream)) == 2
    proxy.restart(cache={"mode": "replay"})
    with sdk(proxy, max_retries=0) as client, pytest.raises(openai.APIStatusError) as miss:
        client.responses.create(**body)
    message = miss.value.message
    assert miss.value.status_code == 504 and miss.value.code == "cache_miss"
    assert "background response (background: true)" in message
    assert "never records" in message and "record mode" not in message
    assert len(responses_calls(upstream)) == 2


def test_only_if_cached_keeps_what_is_never_cached_offline_too(make_proxy, upstream):
    """only-if-cached asks for no network, in record mode too: a background response, which
    is never recorded, is a 504 saying so, not a live call."""
    proxy = make_proxy()
    body = {"model": "gpt-test", "input": "a long job", "background": True}
    offline = {"Cache-Control": "only-if-cached"}
    with sdk(proxy, max_retries=0) as client, pytest.raises(openai.APIStatusError) as miss:
        client.responses.create(**body, extra_headers=offline)
    assert miss.value.status_code == 504 and miss.value.code == "cache_miss"
    assert "asked only-if-cached" in miss.value.message
    assert "replay mode" not in miss.value.message.split(",")[0]
    assert responses_calls(upstream) == []
