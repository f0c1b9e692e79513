"""How values read in text for people: the pure helpers behind the CLI and the dashboard."""

from __future__ import annotations

from proxy import human
from proxy.config import load_settings


def test_plural():
    assert [human.plural(n, "entry", "entries") for n in (0, 1, 2)] == [
        "0 entries",
        "1 entry",
        "2 entries",
    ]
    assert human.plural(1, "token") == "1 token" and human.plural(3, "token") == "3 tokens"


def test_none_reads_as_words():
    assert (human.seed(None), human.seed(0)) == ("no seed", "seed 0")
    assert (human.fingerprint(None), human.fingerprint("fp_a")) == ("null", "fp_a")
    assert (human.shown(None), human.shown(None, "none"), human.shown(0.5)) == (
        "default",
        "none",
        "0.5",
    )
    assert (human.yes_no(True), human.yes_no(False)) == ("yes", "no")


def test_proxy_facts():
    settings = load_settings(
        None,
        {
            "SEEDPROXY_UPSTREAM_BASE_URL": "http://u:pw@10.0.0.1:8000/v1",
            "SEEDPROXY_CACHE_BACKEND": "redis",
            "SEEDPROXY_CACHE_REDIS_URL": "redis://:pw@r:6379/0",
            "SEEDPROXY_SEED_MODE": "passthrough",
        },
    )
    assert dict(human.proxy_facts(settings, auth=False)) == {
        "upstream": "http://***@10.0.0.1:8000/v1",
        "mode": "record",
        "seed": "passthrough",
        "fingerprint": "current",
        "cache": "redis:redis://***@r:6379/0",
        "scope": "shared",
        "auth": "off",
    }
    assert dict(human.proxy_facts(settings, auth=True))["auth"] == "on"


def test_stat_rows_show_every_stat_a_new_counter_included():
    stats = {
        "requests": 3,
        "hits": 1,
        "misses": 2,
        "hit_ratio": 1 / 3,
        "replay_misses": 0,
        "money_saved_usd": None,
        "comparisons_identical": 4,
    }
    assert human.stat_rows(stats) == [
        ("requests", "3"),
        ("hits", "1"),
        ("misses", "2"),
        ("hit ratio", "33.3%"),
        ("replay misses", "0"),
        ("money saved", "(set [prices] to see it)"),
        ("comparisons identical", "4"),
    ]
    assert ("money saved", "$0.1250") in human.stat_rows({"money_saved_usd": 0.125})
