"""A literal placeholder never shares a key with the secret it names (issue 28 items 1
and 2): Alice's "Is AKIA... still active?" is stored as ``[REDACTED:aws_access_key_id:
1a5d44a2dca1]``, a digest anyone can read in an export or a drift event; Bob sending that
text literally must get his own answer. A live request's placeholder-shaped text (either
form) becomes ``[REDACTED:placeholder:<digest of the literal>]`` before redaction, a
stored request keeps its placeholders, so a cassette's keys computed on load are the live
keys and each request replays its own answer."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.keys import Where
from proxy.redact import Redactor, disarmed
from tests import harness
from tests.harness import FAKE_KEY, Serve, free_port, proxy_settings
from tests.secrets_corpus import FAKES

SECRET = "AKIAIOSFODNN7EXAMPLE"
ITS_PLACEHOLDER = "[REDACTED:aws_access_key_id:1a5d44a2dca1]"
CHAT = Where("/v1/chat/completions")


def own(literal: str) -> str:
    return f"[REDACTED:placeholder:{hashlib.sha256(literal.encode()).hexdigest()[:12]}]"


def body(text: str) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": text}]}


@pytest.fixture(scope="module")
def keyer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return proxy_settings(tmp_path_factory.mktemp("c"), "http://127.0.0.1:9").keyer


def test_the_placeholder_of_a_secret_is_its_own_placeholder_when_sent_literally():
    redactor = Redactor()
    assert redactor.text(f"Is {SECRET} ok?") == f"Is {ITS_PLACEHOLDER} ok?"
    live = redactor.text(f"Is {ITS_PLACEHOLDER} ok?", live=True)
    assert live == f"Is {own(ITS_PLACEHOLDER)} ok?"
    legacy = "[REDACTED:aws_access_key_id]"
    assert redactor.text(f"Is {legacy} ok?", live=True) == f"Is {own(legacy)} ok?"
    # one pass on the text as sent: a literal of the new kind is made another one
    assert disarmed(own(legacy)) == own(own(legacy)) != own(legacy)
    # stored text keeps its placeholders: redacting it again changes nothing
    assert redactor.text(live) == live and redactor.text(f"Is {ITS_PLACEHOLDER}") == (
        f"Is {ITS_PLACEHOLDER}"
    )
    # with the detectors off nothing is a placeholder, so nothing is rewritten
    assert Redactor(builtin=False).text(ITS_PLACEHOLDER, live=True) == ITS_PLACEHOLDER


def test_the_quick_check_lets_a_literal_through_only_on_live_input():
    redactor = Redactor()
    raw = orjson.dumps(body(f"Is {ITS_PLACEHOLDER} ok?"))
    assert not redactor.might(raw)
    assert redactor.might(raw, live=True)
    assert redactor.json_bytes(raw) is raw
    assert own(ITS_PLACEHOLDER).encode() in redactor.json_bytes(raw, live=True)
    escaped = raw.replace(b"[REDACTED", b"\\u005bREDACTED")  # spelled with an escape
    assert own(ITS_PLACEHOLDER).encode() in redactor.json_bytes(escaped, live=True)


def _stored(keyer: Any, text: str) -> dict[str, Any]:
    """The request as the recorder keeps it (live redaction of the client's bytes)."""
    raw = orjson.dumps(body(text))
    return orjson.loads(keyer.rules.redactor.json_bytes(raw, live=True))


_TEXT = st.text(alphabet="abc XYZ.,:?[]", max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    fake=st.sampled_from(FAKES),
    before=_TEXT,
    after=_TEXT,
    legacy=st.booleans(),
    twice=st.booleans(),
)
def test_a_literal_placeholder_never_shares_a_key_with_its_secret(
    keyer, fake, before, after, legacy, twice
):
    kind, text, secret = fake
    redactor = keyer.rules.redactor
    shown = redactor.text(text)  # what an export or a drift event shows of it
    assert secret not in shown
    placeholder = redactor.placeholder(kind, secret.encode()).decode()
    literal = f"[REDACTED:{kind}]" if legacy else placeholder  # the old form, or the new
    if twice:  # the literal's own placeholder sent literally in turn
        literal = own(literal)
    with_secret = f"{before} {text} {after}"
    with_literal = f"{before} {shown.replace(placeholder, literal)} {after}"
    a = keyer.key(CHAT, True, body(with_secret), live=True)
    b = keyer.key(CHAT, True, body(with_literal), live=True)
    assert a.key != b.key
    assert b.legacy is None or b.legacy != a.key
    # what the recorder stores, loaded again (stored input), keys as the live request did
    for sent, keyed in ((with_secret, a), (with_literal, b)):
        stored = _stored(keyer, sent)
        assert keyer.key(CHAT, True, stored, live=False).key == keyed.key
        assert keyer.rules.redactor.value(stored) is stored  # idempotent


def test_a_literal_placeholder_in_the_query_is_its_own_too(keyer):
    credential = keyer.query("api_key=tok3n-value", live=True)
    literal = credential.partition("=")[2]
    sent = keyer.query(f"api_key={literal}", live=True)
    assert sent != credential and own(literal) in sent
    assert keyer.query(sent, live=False) == sent  # a cassette's query keys the same
    a = keyer.key(Where(CHAT.path, "api_key=tok3n-value"), True, body("hi"), live=True)
    b = keyer.key(Where(CHAT.path, f"api_key={literal}"), True, body("hi"), live=True)
    assert a.key != b.key


# -- through a real seedproxy serve ----------------------------------------------------------


def cli(*args: str, cwd: Path, upstream: str = "") -> subprocess.CompletedProcess[str]:
    env = {"SEEDPROXY_UPSTREAM_BASE_URL": upstream} if upstream else {}
    return harness.cli(*args, cwd=cwd, env=env)


PROMPTS = {
    "alice": f"Is {SECRET} still active?",
    "bob": f"Is {ITS_PLACEHOLDER} still active?",
    "carol": "Is [REDACTED:aws_access_key_id] still active?",  # the legacy form
    "dave": f"Is {own(ITS_PLACEHOLDER)} still active?",  # Bob's, sent literally
}


def ask_all(port: int) -> dict[str, tuple[str, str, str]]:
    """Each prompt's (X-Cache, key, answer) through the SDK."""
    out = {}
    with openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=FAKE_KEY, max_retries=0
    ) as client:
        for who, prompt in PROMPTS.items():
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-test", messages=[{"role": "user", "content": prompt}]
            )
            answer = raw.parse().choices[0].message.content or ""
            out[who] = (raw.headers["x-cache"], raw.headers["x-seedproxy-key"], answer)
    return out


def test_bob_sending_alices_placeholder_gets_his_own_answer_live_and_from_a_cassette(
    upstream, tmp_path
):
    cache = tmp_path / "cache"
    served = Serve(free_port(), upstream, {}, "--cache-dir", str(cache))
    try:
        first = ask_all(served.port)
        again = ask_all(served.port)
    finally:
        served.stop()
    assert {label for label, _, _ in first.values()} == {"MISS"}
    assert len({key for _, key, _ in first.values()}) == len(PROMPTS)
    assert len({answer for _, _, answer in first.values()}) == len(PROMPTS)
    for who in PROMPTS:  # each gets its own answer back
        assert again[who] == ("HIT", *first[who][1:]), who
    assert len(upstream.chat_calls) == len(PROMPTS)

    cassette = tmp_path / "cassette.json"
    up = f"{upstream.url}/v1"  # the proxy's: a cassette's keys cover the upstream
    result = cli("export", str(cassette), "--cache-dir", str(cache), cwd=tmp_path, upstream=up)
    assert result.returncode == 0, result.stderr
    shown = cassette.read_text()
    assert SECRET not in shown
    assert own(ITS_PLACEHOLDER) in shown and own(own(ITS_PLACEHOLDER)) in shown
    assert cli("scan", str(cassette), cwd=tmp_path).returncode == 0

    fresh = tmp_path / "fresh"  # loaded from the cassette: keys computed again
    result = cli("import", str(cassette), "--cache-dir", str(fresh), cwd=tmp_path, upstream=up)
    assert result.returncode == 0, result.stderr
    calls = len(upstream.calls)
    served = Serve(free_port(), upstream, {}, "--cache-dir", str(fresh), "--mode", "replay")
    try:
        replayed = ask_all(served.port)
    finally:
        served.stop()
    for who in PROMPTS:
        assert replayed[who] == ("HIT", *first[who][1:]), who
    assert len(upstream.calls) == calls
