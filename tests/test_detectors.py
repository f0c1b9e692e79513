"""The secret detectors: what they find, what they leave alone, placeholders that keep two
requests apart, and the corpus whose counts README's Secrets section shows."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.keys import KeyRules, Rewrite, cache_key, parse_path
from proxy.redact import BUILTIN, Redactor, _aws_secret, names_secret
from tests.secrets_corpus import FAKES, LOOK_ALIKES, prose

README = Path(__file__).resolve().parent.parent / "README.md"


def placeholder(kind: str, secret: str) -> str:
    return f"[REDACTED:{kind}:{hashlib.sha256(secret.encode()).hexdigest()[:12]}]"


def exact_hits(redactor: Redactor) -> int:
    """Fakes found as exactly one secret of the right kind, spanning exactly the key."""
    return sum(
        [(f.kind, f.value) for f in redactor.find(text)] == [(kind, secret)]
        for kind, text, secret in FAKES
    )


def flagged(redactor: Redactor) -> int:
    return sum(bool(list(redactor.find(sentence))) for sentence in prose())


@pytest.mark.parametrize(("kind", "text", "secret"), FAKES, ids=[f[0] for f in FAKES])
def test_each_fake_becomes_a_placeholder_with_its_digest(kind, text, secret):
    redactor = Redactor()
    before, _, after = text.partition(secret)
    assert redactor.text(text) == before + placeholder(kind, secret) + after
    assert redactor.text(redactor.text(text)) == redactor.text(text)


def test_every_detector_is_in_the_corpus():
    assert {d.kind for d in BUILTIN} == {kind for kind, _, _ in FAKES}


@pytest.mark.parametrize("sentence", LOOK_ALIKES)
def test_look_alikes_are_left_alone(sentence):
    assert Redactor().text(sentence) == sentence


def test_corpus_counts_are_the_readme_s():
    """README's table is measured, not written by hand: this test recomputes it."""
    new, old = Redactor(), Redactor(legacy=True)
    assert exact_hits(new) == len(FAKES)
    assert flagged(new) == 0
    text = README.read_text()
    rows = {
        m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)))
        for m in re.finditer(
            r"^\| (\w+)[^|]*\| (\d+) of (\d+) \| (\d+) of (\d+) \|$", text, re.MULTILINE
        )
    }
    total = len(prose())
    assert rows["Now"] == (exact_hits(new), len(FAKES), flagged(new), total)
    assert rows["Before"] == (exact_hits(old), len(FAKES), flagged(old), total)


def test_same_secret_same_placeholder_and_different_secrets_different_ones():
    redactor = Redactor()
    a, b = "AKIA" + "FAKE2EXAMPLE3456", "AKIA" + "FAKE2EXAMPLE3457"
    assert redactor.text(a) == redactor.text(a) == placeholder("aws_access_key_id", a)
    assert redactor.text(a) != redactor.text(b)


def test_a_pem_header_without_its_end_hides_only_itself():
    redactor = Redactor()
    head = "-----BEGIN PRIVATE KEY-----"
    for rest in (" Now, unrelated: what is the capital of France?", "\nwhat is 2+2?"):
        assert redactor.text(head + rest) == placeholder("private_key", head) + rest
    # a block cut short keeps its base64 lines hidden, and nothing after them
    block = head + "\n" + "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" * 2
    assert redactor.text(block + "\nThanks!") == placeholder("private_key", block) + "\nThanks!"


def test_context_stays_readable():
    redactor = Redactor()
    token = "FAKEtok3n.abc123_def456"
    assert redactor.text(f"Bearer {token}") == f"Bearer {placeholder('bearer_token', token)}"
    shown = f"Send Bearer {placeholder('bearer_token', token)}."
    assert redactor.text(f"Send Bearer {token}.") == shown  # the sentence's full stop stays


def test_legacy_form_is_what_seedproxy_wrote_before():
    """The old placeholder and the old detectors, whole matches replaced: what cassettes
    written before the digest hold, so the legacy key of a request finds them."""
    legacy = Redactor(legacy=True)
    openai = "sk-" + "proj-" + "Ab3d" * 12
    assert legacy.text(f"use {openai} now") == "use [REDACTED:openai_key] now"
    assert legacy.text("x Bearer abcdefghijklmnopqrstuvwx") == "x [REDACTED:bearer_token]"
    assert legacy.text("-----BEGIN PRIVATE KEY----- what is 2+2?") == "[REDACTED:private_key]"
    assert legacy.text("xoxb-your-token-here") == "[REDACTED:slack_token]"
    assert Redactor().legacy_form().text(openai) == "[REDACTED:openai_key]"
    for form in ("[REDACTED:openai_key]", "[REDACTED:custom]", placeholder("jwt", "x")):
        assert Redactor(patterns=[r"[a-f0-9]{4,}", r"REDACTED", r"\w+"]).text(form) == form
        assert legacy.text(form) == form


# Pieces a text is made of: secrets, look-alikes, placeholders (ours and the old form),
# and the characters detectors stop at.
_PIECES = st.one_of(
    st.sampled_from([secret for _, _, secret in FAKES]),
    st.sampled_from(LOOK_ALIKES),
    st.sampled_from(
        ["[REDACTED:openai_key]", "[REDACTED:jwt:0123456789ab]", "[REDACTED:", "]", "Bearer "]
    ),
    st.sampled_from(["-", "_", " ", "\n", "\\n", "=", '"', ":", "sk-", "eyJ", "AKIA", "é"]),
    st.text(max_size=8),
)
_TEXTS = st.lists(_PIECES, max_size=8).map("".join)
_CUSTOM = [r"[0-9a-f]{6}", r"REDACTED", r"\w+-\d+", r"[:\]]+"]


@settings(max_examples=300, deadline=None)
@given(text=_TEXTS, custom=st.lists(st.sampled_from(_CUSTOM), max_size=2))
def test_redaction_is_idempotent(text, custom):
    """No detector or user pattern matches a placeholder: redacting again changes nothing,
    so a key computed from a cassette's redacted request is the live request's key."""
    redactor = Redactor(patterns=custom)
    once = redactor.text(text)
    assert redactor.text(once) == once
    assert redactor.legacy_form().text(redactor.legacy_form().text(text)) == (
        redactor.legacy_form().text(text)
    )


_RULES = KeyRules(
    ignore_fields=("user", "stream"),
    ignore_paths=(parse_path("messages[*].name"),),
    normalize=(Rewrite.parse({"pattern": r"req-[0-9]+", "replace": "req-N"}),),
    redactor=Redactor(),
)


def _key(body: dict[str, object]) -> str:
    return cache_key("/v1/chat/completions", "", "", "http://up", _RULES.canonical(body))


def _body(text: str, user: str = "u", name: str = "n") -> dict[str, object]:
    """``text`` in a message, in a tool's description and as a parameter's name (an object
    key); ``user`` and ``name`` where the rules ignore them."""
    message = {"role": "user", "content": f"Look: {text}", "name": name}
    function = {
        "name": "f",
        "description": text,
        "parameters": {"type": "object", "properties": {text: {"type": "string"}}},
    }
    return {
        "model": "m",
        "seed": 1,
        "user": user,
        "messages": [message],
        "tools": [{"type": "function", "function": function}],
    }


@settings(max_examples=400, deadline=None)
@given(a=_TEXTS, b=_TEXTS, ignored=st.text(max_size=5))
@example(
    a="-----BEGIN PRIVATE KEY----- Now, unrelated: what is the capital of France?",
    b="-----BEGIN PRIVATE KEY----- Now, unrelated: what is 2+2?",
    ignored="",
)
@example(
    a="Decode this token: " + FAKES[-1][2],
    b="Decode this token: " + FAKES[-1][2][:-1] + "d",
    ignored="",
)
@example(a="sk-learn-compatible-estimator", b="sk-learn-compatible-transform", ignored="")
def test_two_requests_that_differ_never_share_a_key(a, b, ignored):
    """Requests differing anywhere the key does not deliberately ignore (an ignored field,
    an ignored path, a normalize rule) keep apart, secrets and look-alikes included."""
    same_after_rules = re.sub(r"req-[0-9]+", "req-N", a) == re.sub(r"req-[0-9]+", "req-N", b)
    keys_equal = _key(_body(a)) == _key(_body(b, user=ignored, name=ignored))
    assert keys_equal == same_after_rules


def _naive(redactor: Redactor, value: object) -> object:
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, list):
        return [_naive(redactor, v) for v in value]
    if isinstance(value, dict):
        return {
            redactor.text(k): placeholder("aws_secret_access_key", v)
            if isinstance(v, str) and names_secret(k) and _aws_secret(v)
            else _naive(redactor, v)
            for k, v in value.items()
        }
    return value


_JSON = st.recursive(
    st.one_of(_TEXTS, st.integers(), st.none(), st.just("\x00")),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_TEXTS, inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=_JSON)
def test_a_json_value_is_redacted_as_each_of_its_strings_alone(value):
    """The detectors run once over all strings of a body joined: the same result as one
    string at a time, and the very same object when nothing is found."""
    redactor = Redactor()
    out = redactor.value(value)
    assert out == _naive(redactor, value)
    assert (out is value) == (out == value)


def test_a_secret_access_key_is_found_by_its_field_name_in_json_too():
    """boto3's credentials as JSON: the key and its value are two strings."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    redactor = Redactor()
    for field in ("SecretAccessKey", "aws_secret_access_key", "secretAccessKey"):
        raw = orjson.dumps({"Credentials": {field: secret, "Note": secret[:20]}})
        out = orjson.loads(redactor.json_bytes(raw))["Credentials"]
        assert out == {field: placeholder("aws_secret_access_key", secret), "Note": secret[:20]}
    assert redactor.value({"SecretAccessKey": "not-forty"}) == {"SecretAccessKey": "not-forty"}
    plain = {"AccessKey": secret}  # not the secret's name: left as it is
    assert redactor.value(plain) is plain
