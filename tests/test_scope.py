"""Issue 28, item 11: a scope is the credential, not its spelling. ``per-key`` scope, the
coalescing of misses and the owner of drift events all hash the one credential however a
client spells it (scheme case, spacing, Basic with the token as password, ``api-key``);
admin pages refuse to be framed. Pure parts first, then a real `seedproxy serve`."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest
from multidict import CIMultiDict

from proxy.guard import unframed
from proxy.scope import credential, credential_scope, event_owner
from tests.harness import Serve, free_port, http
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


SAME = [
    {"Authorization": "Bearer tok"},
    {"Authorization": "bearer tok"},
    {"Authorization": "BEARER   tok  "},
    {"Authorization": "\tBearer\ttok"},
    {"Authorization": basic("alice", "tok")},
    {"Authorization": basic("", "tok")},
    {"Authorization": "basic  " + base64.b64encode(b"any:tok").decode() + " "},
    {"api-key": "tok"},
    {"API-Key": "  tok "},
]


@pytest.mark.parametrize("headers", SAME)
def test_one_credential_however_spelled(headers):
    assert credential(CIMultiDict(headers)) == b"tok"
    assert credential_scope(CIMultiDict(headers)) == credential_scope(
        {"Authorization": "Bearer tok"}
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer tok2"},
        {"Authorization": "Bearer to k"},
        {"Authorization": "Bearer TOK"},  # a token's own case is the token
        {"Authorization": "Token tok"},  # another scheme is another credential
        {"Authorization": basic("tok", "")},  # a user name is not the password
        {"api-key": "tok2"},
        {},
    ],
)
def test_other_credentials_are_other_scopes(headers):
    assert credential_scope(CIMultiDict(headers)) != credential_scope(
        {"Authorization": "Bearer tok"}
    )


def test_scopes_made_before_spellings_merged_keep_their_hash():
    """An SDK spells ``Bearer <key>``: entries and events stored under that hash stay."""
    assert (
        credential_scope({"Authorization": "Bearer sk-a"})
        == (hashlib.sha256(b"Bearer sk-a").hexdigest()[:32])
    )
    assert credential_scope({}) == hashlib.sha256(b"").hexdigest()[:32]


def test_basic_without_a_password_is_a_credential_of_its_own():
    """A gateway's key in the user slot, or Basic that is not base64, is neither anonymous
    nor another client's credential."""
    others = [
        basic("alice-key", ""),
        basic("bob-key", ""),
        "Basic " + base64.b64encode(b"carol-key").decode(),
        "Basic !!not-base64!!",
        "Basic !!other!!",
    ]
    scopes = [credential_scope({"Authorization": a}) for a in others]
    assert len(set(scopes)) == len(others)
    assert credential_scope({}) not in scopes
    assert credential_scope({"Authorization": "Bearer alice-key"}) not in scopes
    assert credential({"Authorization": basic("", "")}) == b""  # nothing in either slot


def test_no_credential_is_no_credential():
    assert credential({}) == b""
    assert credential({"Authorization": "Bearer"}) == b""
    assert event_owner({"Authorization": "Bearer tok"}, "shared") is None
    assert event_owner({"Authorization": "bearer tok"}, "per-key") == credential_scope(
        {"Authorization": "Bearer tok"}
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, "frame-ancestors 'none'"),
        ("default-src 'self'", "default-src 'self'; frame-ancestors 'none'"),
        (
            "default-src 'self'; Frame-Ancestors https://evil.example; img-src data:;",
            "default-src 'self'; img-src data:; frame-ancestors 'none'",
        ),
    ],
)
def test_unframed_merges_with_a_policy_the_page_has(before, after):
    headers = CIMultiDict({"Content-Security-Policy": before} if before else {})
    unframed(headers)
    assert headers["X-Frame-Options"] == "DENY"
    assert headers.getall("Content-Security-Policy") == [after]


# -- a real `seedproxy serve` --------------------------------------------------------------

UPSTREAM_KEY = "sk-upstream-scope-key-do-not-leak"
CHAT = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "scoped"}]})
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def team(upstream, tmp_path):
    """`seedproxy serve` with two proxy tokens and per-key scope."""
    env = {
        "SEEDPROXY_AUTH_TOKENS": "tok-alice,tok-bob",
        "SEEDPROXY_CACHE_SCOPE": "per-key",
        "OPENAI_API_KEY": UPSTREAM_KEY,
    }
    served = Serve(free_port(), upstream, env, "--cache-dir", str(tmp_path / "c"))
    yield f"http://127.0.0.1:{served.port}"
    served.stop()


def cache(url: str, authorization: str, **headers: str) -> str:
    status, got, body = http(
        url, "POST", "/v1/chat/completions", CHAT, JSON | {"Authorization": authorization} | headers
    )
    assert status == 200, body
    return got["X-Cache"]


def test_per_key_scope_is_the_token_not_its_spelling(team, upstream):
    assert cache(team, "Bearer tok-alice") == "MISS"
    assert cache(team, "bearer   tok-alice ") == "HIT"
    assert cache(team, "BEARER\ttok-alice") == "HIT"
    assert cache(team, "Bearer tok-bob") == "MISS"  # another token, another scope
    assert len(upstream.chat_calls) == 2


def test_per_key_scope_without_tokens_is_the_clients_key(upstream, tmp_path):
    """No proxy tokens: the client's own key is the credential, in either header."""
    served = Serve(
        free_port(),
        upstream,
        {"SEEDPROXY_CACHE_SCOPE": "per-key"},
        "--cache-dir",
        str(tmp_path / "c"),
    )
    url = f"http://127.0.0.1:{served.port}"
    try:
        assert cache(url, "Bearer sk-alice-key") == "MISS"
        status, got, _ = http(
            url, "POST", "/v1/chat/completions", CHAT, JSON | {"api-key": " sk-alice-key"}
        )
        assert status == 200 and got["X-Cache"] == "HIT"
        assert cache(url, "bearer sk-alice-key") == "HIT"
        assert cache(url, "Bearer sk-ALICE-key") == "MISS"
    finally:
        served.stop()


def test_basic_auth_shows_the_drift_the_bearer_token_made(team, upstream):
    assert cache(team, "Bearer tok-alice") == "MISS"
    upstream.nondeterministic = True
    assert cache(team, "bearer tok-alice", **{"Cache-Control": "no-cache"}) == "REFRESH"

    def drift(authorization: str) -> list[dict]:
        status, _, body = http(
            team, "GET", "/_seedproxy/drift", headers={"Authorization": authorization}
        )
        assert status == 200, body
        return orjson.loads(body)["drift"]

    made = drift("Bearer tok-alice")
    assert len(made) == 1
    assert drift(basic("alice", "tok-alice")) == made
    assert drift(basic("someone-else", "tok-alice")) == made
    assert drift("Bearer tok-bob") == [] and drift(basic("alice", "tok-bob")) == []
    page = http(team, "GET", "/_seedproxy/", headers={"Authorization": basic("a", "tok-alice")})
    assert page[0] == 200 and "drift show" in page[2].decode()
    page = http(team, "GET", "/_seedproxy/", headers={"Authorization": basic("a", "tok-bob")})
    assert page[0] == 200 and "drift show" not in page[2].decode()


ADMIN = [
    ("GET", "/_seedproxy/"),
    ("GET", "/_seedproxy"),
    ("GET", "/_seedproxy/stats"),
    ("GET", "/_seedproxy/drift"),
    ("POST", "/_seedproxy/explain"),
    ("GET", "/metrics"),
]


def test_admin_pages_refuse_to_be_framed(team):
    alice = {"Authorization": "Bearer tok-alice"} | JSON
    for method, path in ADMIN:
        for headers in (alice, {}):  # answered, and refused for want of a token
            status, got, _ = http(team, method, path, CHAT if method == "POST" else None, headers)
            assert status == (200 if headers else 401), (method, path)
            assert got["X-Frame-Options"] == "DENY", (method, path)
            assert got.get_all("Content-Security-Policy") == ["frame-ancestors 'none'"]
    _, got, _ = http(team, "POST", "/v1/chat/completions", CHAT, alice)
    assert "X-Frame-Options" not in got  # an API answer is no page


def test_a_page_of_another_site_cannot_frame_the_dashboard(team):
    """What clickjacking needs: the dashboard inside a decoy page, the browser sending the
    person's Basic credentials. Chromium refuses to render it in the frame."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is missing: the test command installs Debian's chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                http_credentials={"username": "alice", "password": "tok-alice"}
            )
            page = context.new_page()
            assert "Stats" in (page.goto(team + "/_seedproxy/") and page.content())
            framed: list[int] = []
            page.on(
                "response", lambda r: framed.append(r.status) if "_seedproxy" in r.url else None
            )
            page.set_content(f'<iframe id=f src="{team}/_seedproxy/"></iframe>')
            page.wait_for_load_state("load")
            frame = page.frame_locator("#f")
            assert framed == [200]  # it was fetched, with the credentials...
            assert frame.locator("text=Stats").count() == 0  # ...and not rendered
        finally:
            browser.close()


def test_per_key_scope_does_not_isolate_what_the_upstream_keeps(team, upstream):
    """As the README says: with proxy tokens every pass-through request (files, stored
    completions, batches) reaches the upstream with the one team key, whichever token sent
    it, so the upstream answers every token holder alike."""
    for token in ("tok-alice", "tok-bob"):
        for path in ("/v1/files", "/v1/chat/completions?limit=5"):
            status, _, _ = http(team, "GET", path, headers={"Authorization": f"Bearer {token}"})
            assert status == 200, path
    sent = [call.headers.get("Authorization") for call in upstream.calls]
    assert sent == [f"Bearer {UPSTREAM_KEY}"] * 4
