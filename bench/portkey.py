"""Portkey's open-source AI gateway (the npm package @portkey-ai/gateway) as a peer on misses:
installed into bench/.portkey on first use, started with node on 127.0.0.1, and sent
requests with the headers that route them to an OpenAI-compatible upstream."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from run import Servers

BENCH = Path(__file__).resolve().parent
PACKAGE = "@portkey-ai/gateway@1.15.2"
DIRECTORY = BENCH / ".portkey"
SERVER = DIRECTORY / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


class Unavailable(Exception):
    """Portkey could not be installed or started; the message says why."""


def headers(upstream: int) -> dict[str, str]:
    """What every request to the gateway carries: the provider and where it is."""
    return {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"http://127.0.0.1:{upstream}/v1",
    }


def install() -> Path:
    """The gateway's start-server.js, installed with npm the first time."""
    if SERVER.exists():
        return SERVER
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise Unavailable("npm install failed: node or npm is missing (apt-get install npm)")
    DIRECTORY.mkdir(exist_ok=True)
    try:
        done = subprocess.run(
            [npm, "install", "--prefix", str(DIRECTORY), "--no-audit", "--no-fund", PACKAGE],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        raise Unavailable("npm install failed: timed out after 600 s") from None
    if done.returncode != 0 or not SERVER.exists():
        said = [
            line.removeprefix("npm error").strip()
            for line in done.stderr.splitlines()
            if line.startswith("npm error") and "complete log" not in line
        ]
        raise Unavailable(f"npm install failed: {' '.join(said[:2])[:160] or 'no output'}")
    return SERVER


def start(servers: Servers, port: int) -> subprocess.Popen:
    """The gateway on 127.0.0.1:``port``. Its start-server.js reads ``--port=N`` (8787
    without it) and has no host option, so bench/loopback.mjs, preloaded, binds it to
    127.0.0.1; ``--headless`` leaves out its web UI. ``/`` answers 200 when it is up."""
    server = install()
    node = shutil.which("node")
    assert node is not None  # install() checked
    return servers.start(
        [
            *(node, "--import", str(BENCH / "loopback.mjs")),
            *(str(server), f"--port={port}", "--headless"),
        ],
        port,
        health="/",
        cwd=DIRECTORY,
    )
