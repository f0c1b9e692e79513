"""Matching rules: cache.ignore_paths, [[cache.normalize]], cache.repeat = "sequence"."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys

import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import cassette
from proxy.config import ConfigError, load_settings, with_overrides
from proxy.keys import KeyRules, Rewrite, drop_path, occurrence_key, parse_path, show_path
from proxy.run import Session
from proxy.store import Entry
from tests.conftest import sdk
from tests.harness import http


@pytest.fixture
def backend() -> str:
    return "disk"


SECRETS = [
    "key sk-proj-" + "a1B2" * 12,
    "AKIA" + "ABCDEFGHIJKLMNOP",
    "token ghp_" + "x" * 36,
    "Authorization: Bearer abcdefghijklmnop.qrstuvwxyz",
]
MESSAGES = [{"role": "user", "content": "Say hello", "name": "ann"}]


def ask(client: openai.OpenAI, **body):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES} | body
    return client.chat.completions.with_raw_response.create(**body)


def rewrites(*tables: dict) -> tuple[Rewrite, ...]:
    return tuple(Rewrite.parse(t) for t in tables)


# ignore_paths


@pytest.mark.parametrize(
    ("path", "steps"),
    [
        ("messages[*].name", ("messages", None, "name")),
        ("tools[*].function.description", ("tools", None, "function", "description")),
        ("messages[*].tool_calls[*].id", ("messages", None, "tool_calls", None, "id")),
        ("messages[0].content", ("messages", 0, "content")),
        ("user", ("user",)),
    ],
)
def test_paths_parse_and_print_back(path, steps):
    assert parse_path(path) == steps
    assert show_path(steps) == path


@pytest.mark.parametrize("bad", ["", "[*].x", ".x", "messages[", "messages[x]", "a..b", "a b"])
def test_a_bad_path_is_an_error(bad):
    with pytest.raises(ValueError, match="bad JSON path"):
        parse_path(bad)


def test_drop_path_copies_and_leaves_the_body_alone():
    body = {
        "messages": [
            {"role": "assistant", "tool_calls": [{"id": "call_1", "x": 1}, {"id": "call_2"}]},
            "not an object",
            {"role": "user"},
        ]
    }
    before = orjson.dumps(body)
    dropped = drop_path(body, parse_path("messages[*].tool_calls[*].id"))
    assert dropped["messages"][0]["tool_calls"] == [{"x": 1}, {}]
    assert dropped["messages"][1:] == body["messages"][1:]
    assert orjson.dumps(body) == before


def test_ignore_paths_take_fields_out_of_the_key_only():
    rules = KeyRules(("stream",), (parse_path("messages[*].name"),))
    a = {"model": "m", "messages": [{"role": "user", "content": "x", "name": "ann"}]}
    b = {"model": "m", "messages": [{"role": "user", "content": "x", "name": "bob"}]}
    c = {"model": "m", "messages": [{"role": "user", "content": "y", "name": "ann"}]}
    assert rules.canonical(a) == rules.canonical(b) != rules.canonical(c)
    assert a["messages"][0]["name"] == "ann"


def test_a_bad_ignore_path_names_itself():
    with pytest.raises(ConfigError, match=r"^SEEDPROXY_CACHE_IGNORE_PATHS: bad JSON path 'a\[' "):
        load_settings(None, {"SEEDPROXY_CACHE_IGNORE_PATHS": "messages[*].name,a["})


# normalize


def test_normalize_rules_apply_in_order_and_only_under_their_paths():
    rules = KeyRules(
        normalize=rewrites(
            {"pattern": r"\d{4}-\d{2}-\d{2}", "replace": "<date>"},
            {"pattern": "<date>", "replace": "D", "paths": ["messages[*].content"]},
        )
    )
    body = {"messages": [{"content": "today is 2026-01-31"}], "user": "2026-01-31"}
    assert rules.shape(body) == {"messages": [{"content": "today is D"}], "user": "<date>"}
    assert body["messages"][0]["content"] == "today is 2026-01-31"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            "[[cache.normalize]]\npattern = '('\n",
            "cache.normalize[1].pattern: '(' is not RE2 syntax",
        ),
        (
            "[[cache.normalize]]\npattern = 'a'\n[[cache.normalize]]\npattern = 'b'\nreplace = 1\n",
            "cache.normalize[2].replace: expected a string",
        ),
        ("[[cache.normalize]]\npattern = 'a'\npaths = ['x[']\n", "bad JSON path 'x['"),
        ("[[cache.normalize]]\npattern = '(a)'\nreplace = '\\2'\n", "the pattern has no group 2"),
        (  # RE2 has no look-around: it could not promise linear time
            "[[cache.normalize]]\npattern = 'x'\n[[cache.normalize]]\npattern = 'a(?=b)'\n",
            "cache.normalize[2].pattern: 'a(?=b)' is not RE2 syntax: invalid perl operator: (?=",
        ),
        (
            "[redact]\npatterns = ['(?<!x)key-[0-9]+']\n",
            "redact.patterns: '(?<!x)key-[0-9]+' is not RE2 syntax: invalid perl operator: (?<",
        ),
        ("[[cache.normalize]]\npatern = 'a'\n", "cache.normalize[1]: unknown key 'patern'"),
        ("[cache]\nrepeat = 'twice'\n", "cache.repeat: must be one of same, sequence"),
        ("[redact]\npatterns = ['[']\n", "redact.patterns: '[' is not RE2 syntax"),
    ],
)
def test_bad_rules_stop_the_proxy_with_one_line(tmp_path, toml, expected):
    (tmp_path / "c.toml").write_text(toml)
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(tmp_path / "c.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_normalize_has_no_environment_form():
    with pytest.raises(ConfigError, match="only be set in the config file"):
        load_settings(None, {"SEEDPROXY_CACHE_NORMALIZE": "x"})


def test_normalized_requests_share_an_entry_and_the_upstream_gets_the_original(
    make_proxy, upstream
):
    proxy = make_proxy(
        cache={
            "ignore_paths": ("messages[*].name",),
            "normalize": rewrites({"pattern": r"/tmp/\w+", "replace": "/tmp/X"}),
        }
    )
    with sdk(proxy) as client:
        first = ask(client, messages=[{"role": "user", "content": "read /tmp/abc", "name": "a"}])
        second = ask(client, messages=[{"role": "user", "content": "read /tmp/xyz", "name": "b"}])
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert [c.json()["messages"][0] for c in upstream.chat_calls] == [
        {"role": "user", "content": "read /tmp/abc", "name": "a"}
    ]
    status, _, raw = http(
        proxy.url,
        "POST",
        "/_seedproxy/explain",
        orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "/tmp/q"}]}),
    )
    info = orjson.loads(raw)
    assert status == 200 and '"content":"/tmp/X"' in info["canonical"]
    assert info["ignore_paths"] == ["messages[*].name"] and info["normalize_rules"] == 1


def test_seedproxy_key_shows_the_normalized_form(tmp_path):
    (tmp_path / "c.toml").write_text(
        "[cache]\nignore_paths = ['messages[*].name']\n"
        "[[cache.normalize]]\npattern = '\\d+'\nreplace = 'N'\n"
    )
    (tmp_path / "r.json").write_text(
        '{"model": "m", "messages": [{"role": "user", "content": "run 42", "name": "x"}]}'
    )
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "key", str(tmp_path / "r.json"), "--config", "c.toml"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert '"content":"run N"' in result.stdout and '"name"' not in result.stdout
    assert "ignore paths: messages[*].name; normalize rules: 1" in result.stdout


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


def test_property_the_upstream_gets_exactly_the_client_body(make_proxy, upstream):
    """Normalize rules, ignore paths and redaction shape only the key."""
    proxy = make_proxy(
        cache={
            "ignore_paths": ("messages[*].name", "x_extra[*]"),
            "normalize": rewrites({"pattern": r"[0-9a-f]", "replace": "#"}),
            "mode": "passthrough",
        }
    )

    @settings(max_examples=40, deadline=None)
    @given(
        content=st.text(max_size=60) | st.sampled_from(SECRETS),
        extra=st.dictionaries(st.sampled_from(["metadata", "user", "x_extra"]), JSON, max_size=2),
    )
    def check(content, extra):
        upstream.calls.clear()
        message = {"role": "user", "content": content, "name": content}
        body = orjson.dumps({"model": "m", "seed": 1, "messages": [message], **extra})
        status, _, _ = http(proxy.url, "POST", "/v1/chat/completions", body)
        assert status == 200
        assert [c.body for c in upstream.calls] == [body]

    check()


# repeat = "sequence"


def test_occurrence_keys():
    assert occurrence_key("k", 0) == "k"
    assert len({occurrence_key("k", n) for n in range(5)}) == 5


def test_sequence_records_then_replays_the_nth_answer_in_order(make_proxy, upstream):
    upstream.nondeterministic = True
    proxy = make_proxy(cache={"repeat": "sequence"})
    with sdk(proxy) as client:
        recorded = [ask(client, temperature=1).parse().choices[0].message.content for _ in range(3)]
    assert len(set(recorded)) == 3 and upstream.call_count == 3
    proxy.restart(cache={"mode": "replay"})
    with sdk(proxy, max_retries=0) as client:
        replayed = [ask(client, temperature=1) for _ in range(3)]
        assert [r.headers["x-cache"] for r in replayed] == ["HIT"] * 3
        assert [r.parse().choices[0].message.content for r in replayed] == recorded
        with pytest.raises(openai.APIStatusError) as miss:
            ask(client, temperature=1)
    assert miss.value.status_code == 504
    message = miss.value.body["message"]  # type: ignore[index]
    assert "3 answers were recorded" in message and "answer 4 was asked for" in message
    assert upstream.call_count == 3


def test_sequence_in_record_mode_appends_past_the_recordings(make_proxy, upstream):
    proxy = make_proxy(cache={"repeat": "sequence"})
    with sdk(proxy) as client:
        ask(client)
    proxy.restart()  # a new process counts from the first answer again
    with sdk(proxy) as client:
        labels = [ask(client).headers["x-cache"] for _ in range(2)]
    assert labels == ["HIT", "MISS"] and upstream.call_count == 2


def test_same_keeps_one_answer(make_proxy, upstream):
    proxy = make_proxy()
    with sdk(proxy) as client:
        assert [ask(client).headers["x-cache"] for _ in range(3)] == ["MISS", "HIT", "HIT"]


def _entry(key: str, content: str) -> Entry:
    request = {"model": "m", "messages": [{"role": "user", "content": "q"}], "seed": 12345}
    return Entry(
        key,
        "fp",
        1.0,
        200,
        "application/json",
        "/v1/chat/completions",
        "m",
        12345,
        1,
        1,
        orjson.dumps({"choices": [{"message": {"content": content}}]}),
        orjson.dumps(request),
        b"",
    )


def test_a_cassette_keeps_repeats_in_order_and_recomputes_their_keys():
    base = load_settings(None, {}, {"cache.repeat": "sequence"})
    first = cassette.key_for(
        "/v1/chat/completions", orjson.loads(_entry("", "").request), "", "", base
    )
    entries = [_entry(occurrence_key(first, n), f"answer {n}") for n in range(3)]
    repeats = cassette.Repeats(base)
    data = cassette.dumps(cassette.interaction(e, base, repeats=repeats) for e in entries)
    assert b'"key"' not in data  # every key can be computed again
    loaded = cassette.loads(data, base)
    assert [(r.entry.key, r.entry.body) for r in loaded] == [(e.key, e.body) for e in entries]
    same = with_overrides(base, cache={"repeat": "same"})  # three answers to one request
    with pytest.raises(cassette.CassetteError, match=r"interactions 1 and 2 .* same request"):
        cassette.loads(data, same)


def test_a_session_counts_repeats_from_each_segment_start(tmp_path, upstream, bg):
    settings = load_settings(
        None,
        {},
        {"upstream.base_url": upstream.url + "/v1", "cache.repeat": "sequence"},
    )
    session = Session(settings, cassettes=True)
    path = tmp_path / "c.json"

    async def segment(mode: str, n: int) -> list[str]:
        await session.begin(path, mode)
        async with openai.AsyncOpenAI(base_url=session.base_url, api_key="x") as client:
            labels = [(await ask_async(client)).headers["x-cache"] for _ in range(n)]
        await session.end()
        return labels

    async def ask_async(client: openai.AsyncOpenAI):
        return await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )

    async def scenario() -> tuple[list[str], list[str]]:
        await session.start()
        try:
            return await segment("record", 2), await segment("record", 3)
        finally:
            await session.stop()

    assert bg.run(scenario()) == (["MISS", "MISS"], ["HIT", "HIT", "MISS"])
    assert len(orjson.loads(path.read_bytes())["interactions"]) == 3


def test_identical_requests_in_flight_are_not_merged_across_repeats(make_proxy, upstream):
    upstream.latency = 0.3
    proxy = make_proxy(cache={"repeat": "sequence"})

    with sdk(proxy) as client, concurrent.futures.ThreadPoolExecutor(3) as pool:
        labels = list(pool.map(lambda _: ask(client).headers["x-cache"], range(3)))
    assert labels == ["MISS"] * 3 and upstream.call_count == 3
