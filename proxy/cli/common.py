"""What every ``seedproxy`` command shares: settings from flags, failing in one line, the
configured store opened around a command's work, JSON output."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click
import orjson

from .. import reports
from ..config import ConfigError, Settings, load_settings
from ..store import Store, StoreError, open_store
from ..upstream import upstream_credential


def fail(message: str) -> None:
    click.echo(f"seedproxy: {message}", err=True)
    sys.exit(2)


# The flags that set a setting, so a bad value is reported under the name the user typed.
FLAG_NAMES = {
    "server.host": "--host",
    "server.port": "--port",
    "server.workers": "--workers",
    "upstream.base_url": "--upstream",
    "cache.dir": "--cache-dir",
    "cache.mode": "--mode",
    "seed.mode": "--seed-mode",
    "log.format": "--log-format",
}


def check_cache_dir(settings: Settings) -> None:
    """Create the disk cache directory and prove it is writable, or raise ConfigError."""
    if settings.cache.backend != "disk":
        return
    path = settings.cache_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cache.dir: cannot use {str(path)!r}: {exc.strerror or exc}") from None


def settings_for(config: str | None, flags: dict[str, Any], serving: bool = False) -> Settings:
    try:
        settings = load_settings(config, os.environ, flags, FLAG_NAMES)
        check_cache_dir(settings)
        if serving:
            upstream_credential(settings, os.environ, settings.proxy_tokens())
    except ConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"auth.tokens_file: cannot read it: {exc.strerror or exc}")
    return settings


def store_command(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """A command that opens the configured store (``--config``, ``--cache-dir``) and runs
    ``fn(store, settings, **options)``; ``--json`` is left to the command."""

    @click.option("--config", "config", metavar="FILE", help="TOML config file.")
    @click.option("--cache-dir", help="Disk cache directory (default ./.seedproxy).")
    @functools.wraps(fn)
    def wrapper(config: str | None, cache_dir: str | None, **options: Any) -> None:
        settings = settings_for(config, {"cache.dir": cache_dir})
        with_store(settings, lambda store: fn(store, settings, **options))

    return wrapper


def with_store(settings: Settings, work: Callable[[Store], Awaitable[None]]) -> None:
    """``work(store)`` on the configured store, opened and closed around it; a store that
    cannot be used stops the command with one line."""

    async def run() -> None:
        store = open_store(settings)
        try:
            await store.start()
            await work(store)
        finally:
            await store.close()

    try:
        asyncio.run(run())
    except StoreError as exc:
        fail(str(exc))


def add_counters(settings: Settings, deltas: dict[str, int]) -> None:
    with_store(settings, lambda store: store.add_counters(deltas))


def emit_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def since_time(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return reports.parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
