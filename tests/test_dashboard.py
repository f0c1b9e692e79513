"""The dashboard in a real headless Chromium, and /metrics in Prometheus text format."""

from __future__ import annotations

import shutil

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import sdk
from tests.harness import FAKE_KEY, http

pytestmark = pytest.mark.every_store

MESSAGES = [{"role": "user", "content": "Describe the sea"}]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def drifted(make_proxy, upstream):
    proxy = make_proxy()
    with sdk(proxy) as client:
        client.chat.completions.create(model="gpt-dash", messages=MESSAGES)
        client.chat.completions.create(model="gpt-dash", messages=MESSAGES)
        upstream.nondeterministic = True
        client.chat.completions.create(
            model="gpt-dash", messages=MESSAGES, extra_headers={"Cache-Control": "no-cache"}
        )
    return proxy


def rgb(color: str) -> tuple[int, int, int]:
    r, g, b = (int(x) for x in color[color.index("(") + 1 : color.index(")")].split(",")[:3])
    return r, g, b


def test_dashboard_shows_a_drift_event_with_coloured_diff_rows(drifted):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is missing: the test command installs Debian's chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            response = page.goto(f"{drifted.url}/_seedproxy/")
            assert response is not None and response.status == 200
            assert page.title() == "seedproxy"
            body = page.inner_text("body")
            assert "gpt-dash" in body and "refresh" in body and "fp_one" in body
            assert "Recent drift" in body and "Fingerprints per model" in body
            events = orjson.loads(http(drifted.url, "GET", "/_seedproxy/drift")[2])["drift"]
            event_id = events[0]["id"]
            command = page.locator(".event code.cmd")
            assert command.inner_text() == f"seedproxy drift show {event_id}"
            proxy_facts = page.inner_text("table >> nth=0")
            for fact in ("mode\trecord", f"upstream\t{drifted.settings.upstream.base_url}"):
                assert fact in proxy_facts, proxy_facts
            assert "scope\tshared" in proxy_facts and "auth\toff" in proxy_facts
            stats = page.inner_text("table >> nth=1")
            assert "refreshes\t1" in stats and "replay misses\t0" in stats
            assert page.locator("meta[http-equiv=refresh]").count() == 0
            event = page.locator(".event")
            assert event.count() == 1
            removed = event.locator("td:nth-child(3) .diff_sub, td:nth-child(3) .diff_chg")
            added = event.locator("td:nth-child(6) .diff_add, td:nth-child(6) .diff_chg")
            assert removed.count() > 0 and added.count() > 0
            red = rgb(removed.first.evaluate("e => getComputedStyle(e).backgroundColor"))
            green = rgb(added.first.evaluate("e => getComputedStyle(e).backgroundColor"))
            assert red[0] > red[1] and red[0] > red[2], red
            assert green[1] > green[0] and green[1] > green[2], green
            # the page's own option turns refreshing on: it reloads itself every 10 s
            with page.expect_navigation():
                page.select_option("select[name=refresh]", "10")
            assert page.url.endswith("/_seedproxy/?refresh=10")
            meta = page.locator("meta[http-equiv=refresh]")
            assert meta.get_attribute("content") == "10"
            assert page.locator("select[name=refresh]").input_value() == "10"
            page.screenshot(
                path=str(drifted.settings.cache_dir.parent / "dashboard.png"), full_page=True
            )
            assert FAKE_KEY not in page.content()
            # no external assets: every request went to the proxy itself
            assert requests and all(u.startswith(drifted.url) for u in requests)
        finally:
            browser.close()


def test_dashboard_without_events(proxy):
    status, headers, body = http(proxy.url, "GET", "/_seedproxy/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"No drift recorded" in body


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_dashboard_masks_upstream_credentials_and_refreshes_only_at_offered_intervals(
    make_proxy,
):
    proxy = make_proxy(upstream={"base_url": "http://team:dash-secret@127.0.0.1:9/v1"})
    for query, refresh in (
        ("?refresh=30", b"<meta http-equiv=refresh content=30>"),
        ("?refresh=", None),
        ("?refresh=1", None),  # not offered: a page that reloads every second costs the proxy
        ("?refresh=%3Cscript%3Ealert(1)%3C/script%3E", None),
    ):
        status, _, body = http(proxy.url, "GET", f"/_seedproxy/{query}")
        assert status == 200
        assert b"http://***@127.0.0.1:9/v1" in body and b"dash-secret" not in body
        if refresh is None:
            assert b"http-equiv=refresh" not in body
        else:
            assert refresh in body
        assert b"alert(1)" not in body


def test_metrics(drifted, upstream):
    status, headers, body = http(drifted.url, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    chat = "/v1/chat/completions"
    assert value("seedproxy_requests_total", endpoint=chat, cache="MISS") == 1
    assert value("seedproxy_requests_total", endpoint=chat, cache="HIT") == 1
    assert value("seedproxy_requests_total", endpoint=chat, cache="REFRESH") == 1
    assert value("seedproxy_upstream_latency_seconds_count", endpoint=chat) == 2
    assert value("seedproxy_drift_events_total") == 1
    assert value("seedproxy_fingerprint_changes_total") == 0
    assert value("seedproxy_hits_total") == 1
    assert value("seedproxy_entries") == 1
    assert value("seedproxy_cache_bytes") > 0
    assert FAKE_KEY.encode() not in body
