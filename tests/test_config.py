"""Settings from the environment, a file and flags: what counts as a setting, and errors that
name what the user set."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError, did_you_mean, load_settings

KUBERNETES_LINKS = {
    "SEEDPROXY_PORT": "tcp://10.96.0.12:8080",
    "SEEDPROXY_PORT_8080_TCP": "tcp://10.96.0.12:8080",
    "SEEDPROXY_PORT_8080_TCP_ADDR": "10.96.0.12",
    "SEEDPROXY_PORT_8080_TCP_PORT": "8080",
    "SEEDPROXY_PORT_8080_TCP_PROTO": "tcp",
    "SEEDPROXY_SERVICE_HOST": "10.96.0.12",
    "SEEDPROXY_SERVICE_PORT": "8080",
}


@pytest.mark.parametrize(
    "env",
    [KUBERNETES_LINKS, {"SEEDPROXY_CMD": "python app.py"}, {"SEEDPROXY_SERVER": "x"}],
    ids=["kubernetes", "wrapper", "section-alone"],
)
def test_variables_of_no_known_section_are_ignored(env):
    settings = load_settings(None, env | {"SEEDPROXY_SERVER_PORT": "9009"})
    assert settings.server.port == 9009
    assert settings == load_settings(None, {"SEEDPROXY_SERVER_PORT": "9009"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SEEDPROXY_CACHE_MOD": "replay"},
            "SEEDPROXY_CACHE_MOD: unknown key; did you mean SEEDPROXY_CACHE_MODE?",
        ),
        ({"SEEDPROXY_SERVER_PROT": "1"}, "SEEDPROXY_SERVER_PROT: unknown key; did you mean "),
        (
            {"SEEDPROXY_LOG_XYZ": "1"},
            "SEEDPROXY_LOG_XYZ: unknown key (the [log] keys: format, level)",
        ),
        (
            {"SEEDPROXY_PRICES_GPT": "1"},
            "SEEDPROXY_PRICES_GPT: [prices] can only be set in the config file",
        ),
        (
            {"SEEDPROXY_CACHE_MODE": "replya"},
            "SEEDPROXY_CACHE_MODE: must be one of record, replay, refresh, passthrough, "
            "got 'replya'; did you mean replay?",
        ),
        ({"SEEDPROXY_SERVER_WORKERS": "0"}, "SEEDPROXY_SERVER_WORKERS: must be at least 1"),
    ],
)
def test_a_known_section_names_the_variable(env, message):
    with pytest.raises(ConfigError) as caught:
        load_settings(None, KUBERNETES_LINKS | env)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_errors_name_the_flag_the_file_key_or_the_config_variable(tmp_path):
    names = {"cache.mode": "--mode", "server.workers": "--workers"}
    with pytest.raises(ConfigError, match=r"^--mode: must be one of .*did you mean replay\?$"):
        load_settings(None, {}, {"cache.mode": "replya"}, names)
    with pytest.raises(ConfigError, match=r"^--workers: must be at least 1$"):
        load_settings(None, {}, {"server.workers": "0"}, names)
    config = tmp_path / "seedproxy.toml"
    config.write_text('[upstream]\nbase_url = "ftp://x"\n[seed]\nmod = "force"\n')
    with pytest.raises(ConfigError, match=r"^seed\.mod: unknown key; did you mean seed\.mode\?$"):
        load_settings(config, {})
    config.write_text('[upstream]\nbase_url = "ftp://x"\n')
    with pytest.raises(ConfigError, match=r"^upstream\.base_url: must be an http\(s\) URL"):
        load_settings(config, {})
    with pytest.raises(ConfigError, match=r"^SEEDPROXY_UPSTREAM_BASE_URL: must be an http"):
        load_settings(config, {"SEEDPROXY_UPSTREAM_BASE_URL": "x"})
    with pytest.raises(ConfigError, match=r"^SEEDPROXY_CONFIG: file not found"):
        load_settings(None, {"SEEDPROXY_CONFIG": str(tmp_path / "missing.toml")})
    with pytest.raises(ConfigError, match=r"^--config: file not found"):
        load_settings(tmp_path / "missing.toml", {})


def test_did_you_mean():
    assert did_you_mean("mod", ["backend", "mode"]) == "; did you mean mode?"
    assert did_you_mean("xyz", ["backend", "mode"]) == ""
    assert did_you_mean("mod", ["mode"], str.upper) == "; did you mean MODE?"
