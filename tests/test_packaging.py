"""Issue 30, item 9: ``python -m build`` makes a wheel and an sdist that install into a
fresh virtual environment and run ``seedproxy serve``, as does the README's set-up in a
clone; the README installs nothing by a name no registry serves. Marked ``build``: it
builds in isolation and installs the dependencies from PyPI into a new venv (a minute or
two; pip's cache makes reruns quicker)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import FAKE_KEY, free_port, http, http_ok

ROOT = Path(__file__).resolve().parent.parent
# What a fresh clone does not have: caches, build output, local environments.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", "build", "dist", ".*cache", ".seedproxy", ".venv*"
)


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and "SEEDPROXY" not in k}
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result.stdout


def serves(venv: Path, tmp_path: Path) -> None:
    """The venv's own ``seedproxy serve`` answers /healthz and its dashboard, importing the
    installed package (never this checkout)."""
    where = run(venv / "bin" / "python", "-c", "import proxy; print(proxy.__file__)", cwd=tmp_path)
    assert where.startswith(str(venv)), where
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and "SEEDPROXY" not in k}
    server = subprocess.Popen(
        [venv / "bin" / "seedproxy", "serve", "--port", str(port), "--cache-dir", tmp_path / "c"],
        cwd=tmp_path,
        env=env | {"OPENAI_API_KEY": FAKE_KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not http_ok(port) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polls for start-up; decides nothing
        assert http_ok(port), "seedproxy serve from the install did not answer /healthz"
        status, headers, page = http(f"http://127.0.0.1:{port}", "GET", "/_seedproxy/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"seedproxy" in page
    finally:
        server.terminate()
        server.wait(20)


def installed_from(venv: Path) -> str:
    """Where pip installed seedproxy from: the URL its direct_url.json (PEP 610) records."""
    (record,) = venv.glob("lib/python*/site-packages/seedproxy-*.dist-info/direct_url.json")
    return json.loads(record.read_text())["url"]


@pytest.mark.build
def test_the_wheel_and_the_sdist_install_into_a_fresh_venv_and_serve(tmp_path):
    source = tmp_path / "clone"
    shutil.copytree(ROOT, source, ignore=NOT_IN_A_CLONE)
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, source)
    wheel, sdist = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheel) == 1 and len(sdist) == 1
    # Nothing but the standard library in it (no pip, no setuptools to hide a dependency
    # seedproxy forgot to declare): this pip installs into it. Bytecode is compiled as
    # modules are imported, not ahead for every dependency.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    pip = (sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install")
    pip += ("--disable-pip-version-check", "-q", "--no-compile")
    run(*pip, wheel[0])
    assert installed_from(venv) == wheel[0].as_uri()
    serves(venv, tmp_path)
    run(*pip, "--force-reinstall", "--no-deps", sdist[0])  # built from the sdist's source
    assert installed_from(venv) == sdist[0].as_uri()
    serves(venv, tmp_path)
    # The README's set-up, in a clone: pip builds a directory again whatever is installed,
    # and adds the extra's uvloop to the dependencies already there.
    run(*pip, ".[fast]", cwd=source)
    assert installed_from(venv) == source.as_uri()
    run(venv / "bin" / "python", "-c", "import uvloop")
    serves(venv, tmp_path)
    listing = run("tar", "tzf", sdist[0])  # the whole source, tests with their helpers
    for name in ("tests/conftest.py", "tests/upstream.py", "config.example.toml"):
        assert f"/{name}\n" in listing, name


def test_the_readme_installs_only_from_a_clone_or_a_repository():
    """``pip install seedproxy`` names nothing a registry serves: every ``pip install`` in
    the README installs a path (in a clone, or a built wheel) or a ``git+https://`` URL."""
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"pip install ([^`\n&|;#]+)", readme)
    assert commands, "the README shows how to install"
    for command in commands:
        targets = [t.strip("\"'") for t in command.split() if not t.startswith("-")]
        assert targets, command
        for target in targets:
            local = target.startswith(".") or "/" in target  # a path: no registry name has /
            assert local, f"pip install {command.strip()}"
