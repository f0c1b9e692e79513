"""Serving and running: ``seedproxy serve`` and ``seedproxy run``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
from aiohttp import web

from .. import __version__, human
from ..browser import is_loopback
from ..config import ConfigError, Settings
from ..observe import AccessLogger, access_log, loop_name, new_event_loop, setup_logging
from ..store import StoreError
from ..workers import cannot_listen
from .common import check_cache_dir, fail, settings_for

log = logging.getLogger("seedproxy")


def banner(settings: Settings) -> str:
    """The start-up line: where the proxy listens and what it will do there."""
    s = settings
    facts = human.proxy_facts(s, auth=bool(s.proxy_tokens()))
    return (
        f"seedproxy {__version__} listening on http://{s.server.host}:{s.server.port}"
        f" | loop {loop_name()} | "
        + " | ".join(f"{name} {value}" for name, value in facts)
        + (f" | workers {s.server.workers}" if s.server.workers > 1 else "")
    )


@click.command()
@click.option("--config", "config", metavar="FILE", help="TOML config file.")
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", help="Port to listen on (default 8080).")
@click.option("--upstream", help="Upstream base URL (default https://api.openai.com/v1).")
@click.option("--cache-dir", help="Disk cache directory (default ./.seedproxy).")
@click.option("--mode", help="record | replay | refresh | passthrough (default record).")
@click.option("--seed-mode", help="force | override | require | passthrough (default force).")
@click.option("--workers", help="Processes serving the port (default 1).")
@click.option("--log-format", help="json | text (default json).")
def serve(
    config: str | None,
    host: str | None,
    port: str | None,
    upstream: str | None,
    cache_dir: str | None,
    mode: str | None,
    seed_mode: str | None,
    workers: str | None,
    log_format: str | None,
) -> None:
    """Run the proxy."""
    settings = settings_for(
        config,
        {
            "server.host": host,
            "server.port": port,
            "upstream.base_url": upstream,
            "cache.dir": cache_dir,
            "cache.mode": mode,
            "seed.mode": seed_mode,
            "server.workers": workers,
            "log.format": log_format,
        },
        serving=True,
    )
    setup_logging(settings.log.format, settings.log.level)
    if not is_loopback(settings.server.host) and not settings.proxy_tokens():
        log.warning(
            "listening on a non-loopback address without auth.tokens: anyone who can "
            "reach it can spend the upstream key and read the cache",
            extra={"data": {"host": settings.server.host}},
        )
    try:
        if settings.server.workers > 1:
            from ..workers import StartError, supervise

            try:
                sys.exit(supervise(settings, lambda: click.echo(banner(settings))))
            except StartError as exc:
                fail(str(exc))
        from ..app import create_app

        web.run_app(
            create_app(settings),
            host=settings.server.host,
            port=settings.server.port,
            print=lambda _: click.echo(banner(settings)),
            access_log=access_log,
            access_log_class=AccessLogger,
            loop=new_event_loop(),
        )
    except StoreError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(str(cannot_listen(settings.server, exc)))


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--config", "config", metavar="FILE", help="TOML config file.")
@click.option(
    "--upstream",
    help="Upstream base URL (default: $OPENAI_BASE_URL, else upstream.base_url, else OpenAI).",
)
@click.option("--cache-dir", help="Disk cache directory, when there is no --cassette.")
@click.option("--seed-mode", help="force | override | require | passthrough (default force).")
@click.option("--log-format", help="json | text (default json).")
@click.option(
    "--cassette",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Serve and record this cassette file instead of the cache.",
)
@click.option(
    "--mode",
    help="With --cassette: once (default) | replay | record | rewrite | refresh; "
    "without: the cache mode (default cache.mode).",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the summary to this file as JSON.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    config: str | None,
    upstream: str | None,
    cache_dir: str | None,
    seed_mode: str | None,
    log_format: str | None,
    cassette: Path | None,
    mode: str | None,
    summary_json: Path | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with OPENAI_BASE_URL pointing at a proxy of its own (on a free loopback
    port), then print a summary to stderr and exit with COMMAND's status (125 when the
    proxy could not start, 126/127 when COMMAND cannot be run or found).

    seedproxy run --cassette tests/llm.json -- python my_eval.py"""
    from ..run import chosen_upstream, session_settings
    from ..run import run as run_command
    from ..runmodes import CacheMode, RunMode, parse_mode

    run_mode = RunMode.ONCE  # a cassette's
    cache_mode: CacheMode | None = None  # without a cassette: cache.mode's flag
    if cassette is not None and mode is not None:
        parsed = parse_mode(RunMode, mode)
        if parsed is None:
            raise click.BadParameter(
                f"with --cassette, one of {', '.join(RunMode)}", param_hint="--mode"
            )
        run_mode = parsed
    elif mode is not None:
        cache_mode = parse_mode(CacheMode, mode)
        if cache_mode is None:
            raise click.BadParameter(
                f"without --cassette, one of {', '.join(CacheMode)}", param_hint="--mode"
            )
    flags = {
        "cache.dir": cache_dir,
        "cache.mode": cache_mode,
        "seed.mode": seed_mode,
        "log.format": log_format,
    }
    try:
        given = chosen_upstream(upstream, "--upstream", os.environ)
        settings, upstream_line = session_settings(config, os.environ, flags, given)
        if cassette is None:
            check_cache_dir(settings)
    except ConfigError as exc:
        click.echo(f"seedproxy run: {exc}", err=True)
        sys.exit(125)
    setup_logging(settings.log.format, "warning")  # drift and store trouble; no access lines
    sys.exit(
        run_command(
            settings,
            command,
            cassette,
            run_mode,
            upstream_line,
            summary_json,
        )
    )
