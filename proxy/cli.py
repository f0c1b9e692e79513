"""The ``seedproxy`` command line."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from typing import Any

import click
from aiohttp import web

from . import __version__
from .config import ConfigError, Settings, check_cache_dir, load_settings
from .observe import AccessLogger, access_log, setup_logging
from .store import CorruptStoreError

log = logging.getLogger("seedproxy")


def _fail(message: str) -> None:
    click.echo(f"seedproxy: {message}", err=True)
    sys.exit(2)


def _settings(config: str | None, flags: dict[str, Any]) -> Settings:
    try:
        settings = load_settings(config, os.environ, flags)
        check_cache_dir(settings)
        settings.proxy_tokens()
    except ConfigError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"auth.tokens_file: cannot read it: {exc.strerror or exc}")
    return settings


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def banner(settings: Settings) -> str:
    s = settings
    where = s.cache.dir if s.cache.backend == "disk" else s.cache.redis_url
    seed = s.seed.mode + (f" ({s.seed.default})" if s.seed.mode in ("force", "override") else "")
    return (f"seedproxy {__version__} listening on http://{s.server.host}:{s.server.port}"
            f" | upstream {s.upstream.base_url} | mode {s.cache.mode}"
            f" | cache {s.cache.backend}:{where} | seed {seed}"
            f" | fingerprint {s.cache.fingerprint}")


@click.group()
@click.version_option(__version__, prog_name="seedproxy")
def main() -> None:
    """seedproxy: reproducible, cached OpenAI calls with drift reports."""


@main.command()
@click.option("--config", "config", metavar="FILE", help="TOML config file.")
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", help="Port to listen on (default 8080).")
@click.option("--upstream", help="Upstream base URL (default https://api.openai.com/v1).")
@click.option("--cache-dir", help="Disk cache directory (default ./.seedproxy).")
@click.option("--mode", help="record | replay | refresh | passthrough (default record).")
@click.option("--seed-mode", help="force | override | require | passthrough (default force).")
@click.option("--workers", help="Processes serving the port (default 1).")
@click.option("--log-format", help="json | text (default json).")
def serve(config: str | None, host: str | None, port: str | None, upstream: str | None,
          cache_dir: str | None, mode: str | None, seed_mode: str | None,
          workers: str | None, log_format: str | None) -> None:
    """Run the proxy."""
    settings = _settings(config, {
        "server.host": host, "server.port": port, "upstream.base_url": upstream,
        "cache.dir": cache_dir, "cache.mode": mode, "seed.mode": seed_mode,
        "server.workers": workers, "log.format": log_format,
    })
    if settings.server.workers != 1:
        _fail("server.workers: only 1 worker is supported in this version")
    setup_logging(settings.log.format, settings.log.level)
    if not _is_loopback(settings.server.host) and not settings.proxy_tokens():
        log.warning("listening on a non-loopback address without auth.tokens: anyone who can "
                    "reach it can spend the upstream key and read the cache",
                    extra={"data": {"host": settings.server.host}})
    from .app import create_app

    try:
        app = create_app(settings)
        web.run_app(app, host=settings.server.host, port=settings.server.port,
                    print=lambda _: click.echo(banner(settings)), access_log=access_log,
                    access_log_class=AccessLogger)
    except CorruptStoreError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"server: cannot listen on {settings.server.host}:{settings.server.port}: "
              f"{exc.strerror or exc}")
