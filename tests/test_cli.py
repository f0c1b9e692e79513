"""`seedproxy serve` as a user runs it: a real process, a real port, the official SDK."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from proxy.config import SECTIONS, ConfigError, load_settings
from proxy.workers import CANNOT_START
from tests.conftest import sdk
from tests.harness import FAKE_KEY, clean_env, free_port, serve_argv

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = clean_env()
    return env | {"PYTHONUNBUFFERED": "1"} | extra


class Served:
    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(30)
        self.banner = line[0].strip() if line else ""

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


class _Handle:
    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_serve_end_to_end(tmp_path, upstream, log_format):
    port = free_port()
    served = Served(
        [
            "--port",
            str(port),
            "--upstream",
            f"{upstream.url}/v1",
            "--cache-dir",
            str(tmp_path / "c"),
            "--log-format",
            log_format,
        ],
        _env(),
        tmp_path,
    )
    try:
        assert f"http://127.0.0.1:{port}" in served.banner
        for part in (
            f"upstream {upstream.url}/v1",
            "mode record",
            str(tmp_path / "c"),
            "seed force (12345)",
            "scope shared",
            "auth off",
        ):
            assert part in served.banner, part
        with sdk(_Handle(port)) as client:
            args = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
            first = client.chat.completions.with_raw_response.create(**args)
            second = client.chat.completions.with_raw_response.create(**args)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    finally:
        code, err = served.stop()
    assert code == 0
    access = [line for line in err.splitlines() if "seedproxy.access" in line]
    assert len(access) == 2
    for line, cache in zip(access, ("MISS", "HIT"), strict=True):
        if log_format == "json":
            fields = json.loads(line)
            assert (
                fields.items()
                >= {
                    "level": "info",
                    "logger": "seedproxy.access",
                    "msg": "request",
                    "method": "POST",
                    "status": 200,
                    "path": "/v1/chat/completions",
                    "cache": cache,
                }.items()
            )
            assert fields["pid"] == served.proc.pid and fields["ms"] >= 0 and fields["time"] > 0
        else:
            assert re.fullmatch(r"\d\d:\d\d:\d\d INFO    seedproxy\.access: request \{.*\}", line)
            fields = json.loads(line[line.index("{") :])
            assert (fields["path"], fields["status"], fields["cache"]) == (
                "/v1/chat/completions",
                200,
                cache,
            )
    assert FAKE_KEY not in err
    assert len(upstream.chat_calls) == 1


def test_default_cache_dir_is_dot_seedproxy(tmp_path, upstream):
    served = Served(
        ["--port", str(free_port()), "--upstream", f"{upstream.url}/v1"], _env(), tmp_path
    )
    try:
        assert "cache disk:./.seedproxy" in served.banner
        assert (tmp_path / ".seedproxy").is_dir()
    finally:
        served.stop()


def test_env_beats_file_and_flags_beat_env(tmp_path, upstream):
    config = tmp_path / "seedproxy.toml"
    config.write_text(
        f'[server]\nport = {free_port()}\n[cache]\nmode = "replay"\n'
        f'dir = "{tmp_path / "c"}"\n[upstream]\nbase_url = "{upstream.url}/v1"\n'
    )
    served = Served(
        ["--config", str(config), "--seed-mode", "require"],
        _env(SEEDPROXY_CACHE_MODE="refresh", SEEDPROXY_SEED_MODE="override"),
        tmp_path,
    )
    try:
        assert "mode refresh" in served.banner
        assert "seed require" in served.banner
    finally:
        served.stop()


@pytest.mark.parametrize(
    ("args", "env", "toml", "expected"),
    [
        (["--mode", "sometimes"], {}, None, "--mode: must be one of record, replay"),
        (
            ["--mode", "replya"],
            {},
            None,
            "refresh, passthrough, got 'replya'; did you mean replay?",
        ),
        (["--port", "eighty"], {}, None, "--port: expected an integer"),
        ([], {"SEEDPROXY_CACHE_TTL": "soon"}, None, "SEEDPROXY_CACHE_TTL: expected a duration"),
        (
            [],
            {"SEEDPROXY_CACHE_MOD": "replay"},
            None,
            "SEEDPROXY_CACHE_MOD: unknown key; did you mean SEEDPROXY_CACHE_MODE?",
        ),
        ([], {"SEEDPROXY_SERVER_PORT": "70000"}, None, "SEEDPROXY_SERVER_PORT: must be between"),
        ([], {}, "[cache]\nbogus = 1\n", "cache.bogus: unknown key (the [cache] keys: backend"),
        ([], {}, '[cache]\nmod = "replay"\n', "cache.mod: unknown key; did you mean cache.mode?"),
        ([], {}, "[cahce]\n", "cahce: unknown section; did you mean cache?"),
        ([], {}, '[cache]\nverify_rate = "x"\n', "cache.verify_rate: expected a number"),
        ([], {}, "[cache\n", "is not valid TOML"),
        (
            ["--cache-dir", "/etc/passwd/cache"],
            {},
            None,
            "cache.dir: cannot use '/etc/passwd/cache'",
        ),
        (["--seed-mode", "always"], {}, None, "--seed-mode: must be one of force"),
        (["--upstream", "ftp://x"], {}, None, "--upstream: must be an http(s) URL"),
        (
            [],
            {
                "SEEDPROXY_CACHE_BACKEND": "redis",
                "SEEDPROXY_CACHE_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0",
            },
            None,
            "cache.redis_url: cannot reach redis://***@127.0.0.1:1/0",
        ),
    ],
)
def test_bad_values_exit_with_one_line(tmp_path, args, env, toml, expected):
    cmd = [sys.executable, "-m", "proxy", "serve", "--cache-dir", str(tmp_path / "c"), *args]
    if toml is not None:
        (tmp_path / "bad.toml").write_text(toml)
        cmd += ["--config", str(tmp_path / "bad.toml")]
    result = subprocess.run(
        cmd, env=_env(**env), capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "hunter2" not in result.stderr + result.stdout


def test_precedence_unit():
    settings = load_settings(
        None,
        {"SEEDPROXY_CACHE_MODE": "replay", "SEEDPROXY_SERVER_PORT": "9001"},
        {"cache.mode": "refresh"},
    )
    assert (settings.cache.mode, settings.server.port) == ("refresh", 9001)
    with pytest.raises(ConfigError, match=r"^SEEDPROXY_SEED_DEFAULT: must fit"):
        load_settings(None, {"SEEDPROXY_SEED_DEFAULT": str(2**63)})


def test_example_config_documents_every_key_with_its_default():
    example = ROOT / "config.example.toml"
    assert load_settings(example, {}) == load_settings(None, {})
    text = example.read_text()
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for field in dataclasses.fields(cls):
            assert f"\n{field.name} = " in text, f"{section}.{field.name}"


def test_python_dash_m_and_help():
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    for flag in (
        "--config",
        "--host",
        "--port",
        "--upstream",
        "--cache-dir",
        "--mode",
        "--seed-mode",
        "--workers",
        "--log-format",
    ):
        assert flag in result.stdout


def test_serve_ignores_seedproxy_variables_that_are_not_settings(tmp_path, upstream):
    """Kubernetes injects service links for a Service named seedproxy, and wrapper scripts
    export their own SEEDPROXY_* variables: the proxy starts with its own settings."""
    port = free_port()
    others = {
        "SEEDPROXY_PORT": "tcp://10.96.0.12:8080",
        "SEEDPROXY_PORT_8080_TCP": "tcp://10.96.0.12:8080",
        "SEEDPROXY_PORT_8080_TCP_ADDR": "10.96.0.12",
        "SEEDPROXY_PORT_8080_TCP_PORT": "8080",
        "SEEDPROXY_PORT_8080_TCP_PROTO": "tcp",
        "SEEDPROXY_SERVICE_HOST": "10.96.0.12",
        "SEEDPROXY_SERVICE_PORT": "8080",
        "SEEDPROXY_SERVICE_PORT_HTTP": "8080",
        "SEEDPROXY_CMD": "python app.py",
    }
    served = Served(
        ["--upstream", f"{upstream.url}/v1", "--cache-dir", str(tmp_path / "c")],
        _env(SEEDPROXY_SERVER_PORT=str(port), **others),
        tmp_path,
    )
    try:
        assert f"listening on http://127.0.0.1:{port}" in served.banner
    finally:
        code, err = served.stop()
    assert code == 0, err


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("shared", [False, True], ids=["plain", "reuseport"])
def test_a_port_in_use_stops_serve_with_one_line(tmp_path, workers, shared):
    """Also when the port's holder set SO_REUSEPORT (another seedproxy's workers), which
    the workers' own sockets would otherwise share silently."""
    with socket.socket() as taken:
        if shared:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            serve_argv(port, "--workers", workers),
            env=_env(SEEDPROXY_CACHE_DIR=str(tmp_path / "c")),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert result.returncode == 2
    assert result.stderr == (
        f"seedproxy: server: cannot listen on 127.0.0.1:{port}: address already in use\n"
    )
    assert result.stdout == ""


def test_workers_that_cannot_start_stop_serve_with_one_line(tmp_path):
    env = _env(
        SEEDPROXY_CACHE_BACKEND="redis",
        SEEDPROXY_CACHE_REDIS_URL="redis://:hunter2@127.0.0.1:1/0",
    )
    cmd = serve_argv(free_port(), "--workers", "2")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("seedproxy: cache.redis_url: cannot reach redis://***@127.0.0.1:1/0")


def test_a_worker_that_cannot_listen_reports_one_line_and_the_status_not_to_restart(tmp_path):
    """The supervisor's check can lose a race for the port; the worker then says why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        script = (
            "import queue, sys\n"
            "from proxy.config import load_settings\n"
            "from proxy.workers import run_worker\n"
            f"settings = load_settings(None, {{}}, {{'server.port': {port}}})\n"
            "failures = queue.SimpleQueue()\n"
            "try:\n"
            "    run_worker(settings, failures)\n"
            "except SystemExit as exc:\n"
            "    print(exc.code, failures.get_nowait())\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            env=_env(SEEDPROXY_CACHE_DIR=str(tmp_path / "c")),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert result.stdout == (
        f"{CANNOT_START} server: cannot listen on 127.0.0.1:{port}: address already in use\n"
    ), result.stderr


def test_the_start_up_line_says_what_the_proxy_will_do_without_credentials(tmp_path, upstream):
    port = free_port()
    served = Served(
        [
            "--port",
            str(port),
            "--upstream",
            f"http://team:s3cret-pw@127.0.0.1:{upstream.port}/v1",
            "--mode",
            "replay",
            "--seed-mode",
            "override",
        ],
        _env(
            SEEDPROXY_CACHE_DIR=str(tmp_path / "c"),
            SEEDPROXY_CACHE_SCOPE="per-key",
            SEEDPROXY_SEED_DEFAULT="7",
            SEEDPROXY_AUTH_TOKENS="proxy-token-1",
            OPENAI_API_KEY=FAKE_KEY,
        ),
        tmp_path,
    )
    try:
        parts = served.banner.split(" | ")
        for part in (
            f"upstream http://***@127.0.0.1:{upstream.port}/v1",
            "mode replay",
            "seed override (7)",
            "fingerprint current",
            f"cache disk:{tmp_path / 'c'}",
            "scope per-key",
            "auth on",
        ):
            assert part in parts, served.banner
    finally:
        _, err = served.stop()
    assert "s3cret-pw" not in served.banner + err and "proxy-token-1" not in served.banner + err
