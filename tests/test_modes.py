"""The cache mode and the run mode: one enum each inside, parsed once where a user gives
one (config, flags, the pytest plugin's options, ini and marker), and the same plain names
as before wherever one is shown or written (errors, summaries, JSON)."""

from __future__ import annotations

import json

import orjson
import pytest

from proxy.config import ConfigError, load_settings
from proxy.policy import MODE_ACTION, Action, plan_request
from proxy.run import Result
from proxy.runmodes import CacheMode, RunMode, effective_mode, parse_mode
from tests.harness import cli
from tests.test_plugin import PLUGIN


def test_the_names_users_see_are_unchanged():
    assert [*CacheMode] == ["record", "replay", "refresh", "passthrough"]
    assert [*RunMode] == ["once", "replay", "record", "rewrite", "refresh"]
    assert ", ".join(RunMode) == "once, replay, record, rewrite, refresh"
    assert f"mode {CacheMode.PASSTHROUGH}" == "mode passthrough"
    assert type(str(CacheMode.REPLAY)) is str and str(CacheMode.REPLAY) == "replay"


def test_the_cache_mode_is_parsed_into_the_enum_from_every_layer(tmp_path):
    assert load_settings(None, {}).cache.mode is CacheMode.RECORD
    toml = tmp_path / "seedproxy.toml"
    toml.write_text('[cache]\nmode = "refresh"\n')
    assert load_settings(toml, {}).cache.mode is CacheMode.REFRESH
    env = {"SEEDPROXY_CACHE_MODE": "replay"}
    assert load_settings(toml, env).cache.mode is CacheMode.REPLAY
    flags = {"cache.mode": "passthrough"}
    assert load_settings(toml, env, flags).cache.mode is CacheMode.PASSTHROUGH
    toml.write_text("[cache]\nmode = 1\n")  # no string at all: the same one line
    with pytest.raises(ConfigError) as caught:
        load_settings(toml, {})
    assert str(caught.value) == (
        "cache.mode: must be one of record, replay, refresh, passthrough, got 1"
    )


@pytest.mark.parametrize("value", ["sometimes", "Replay", "", None, 1, ["once"]])
def test_anything_else_parses_to_no_mode(value):
    assert parse_mode(RunMode, value) is None
    assert parse_mode(CacheMode, value) is None


def test_every_cache_mode_plans_an_action():
    assert set(MODE_ACTION) == set(CacheMode)
    assert [plan_request(mode, None).action for mode in CacheMode] == [
        Action.RECORD,
        Action.REPLAY,
        Action.REFRESH,
        Action.BYPASS,
    ]


@pytest.mark.parametrize(
    ("mode", "exists", "expected"),
    [
        (RunMode.ONCE, True, CacheMode.REPLAY),
        (RunMode.ONCE, False, CacheMode.RECORD),
        (RunMode.REWRITE, True, CacheMode.RECORD),
        (RunMode.REWRITE, False, CacheMode.RECORD),
        (RunMode.REPLAY, False, CacheMode.REPLAY),
        (RunMode.RECORD, True, CacheMode.RECORD),
        (RunMode.REFRESH, True, CacheMode.REFRESH),
    ],
)
def test_a_run_mode_becomes_a_cache_mode(mode, exists, expected):
    assert effective_mode(mode, exists) is expected


def test_a_summary_writes_the_mode_as_its_plain_name():
    result = Result("llm.json", CacheMode.REPLAY)
    assert b'"mode":"replay"' in orjson.dumps(result.to_json())
    assert '"mode": "replay"' in json.dumps(result.to_json())
    assert "| mode replay |" in result.text()


def test_run_names_the_modes_of_each_kind(tmp_path):
    with_cassette = cli(
        "run", "--cassette", "c.json", "--mode", "sometimes", "--", "true", cwd=tmp_path
    )
    assert with_cassette.returncode == 2
    assert "with --cassette, one of once, replay, record, rewrite, refresh" in " ".join(
        with_cassette.stderr.split()
    )
    without = cli("run", "--mode", "once", "--", "true", cwd=tmp_path)
    assert without.returncode == 2
    assert "without --cassette, one of record, replay, refresh, passthrough" in " ".join(
        without.stderr.split()
    )


MARKED = """
import pytest


@pytest.mark.seedproxy(mode={mode!r})
def test_marked():
    pass
"""


def test_the_plugin_names_the_run_modes_as_before(pytester: pytest.Pytester):
    pytester.makepyfile(test_it=MARKED.format(mode="sometimes"))
    flag = pytester.runpytest_subprocess(*PLUGIN, "--seedproxy-mode", "sometimes")
    assert flag.ret == pytest.ExitCode.USAGE_ERROR
    flag.stderr.fnmatch_lines(
        [
            "*--seedproxy-mode: invalid choice: 'sometimes' (choose from 'once', 'replay', "
            "'record', 'rewrite', 'refresh')"
        ]
    )
    ini = pytester.runpytest_subprocess(*PLUGIN, "-o", "seedproxy_mode=sometimes")
    assert ini.ret == pytest.ExitCode.USAGE_ERROR
    ini.stderr.fnmatch_lines(
        ["*seedproxy_mode: must be one of once, replay, record, rewrite, refresh, got 'sometimes'"]
    )
    marker = pytester.runpytest_subprocess(*PLUGIN)
    marker.assert_outcomes(errors=1)
    marker.stdout.fnmatch_lines(
        [
            "E * test_it.py::test_marked: @pytest.mark.seedproxy(mode=...) must be one of once, "
            "replay, record, rewrite, refresh, got 'sometimes'"
        ]
    )
