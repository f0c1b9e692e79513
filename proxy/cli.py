"""The ``seedproxy`` command line."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import click
import orjson
from aiohttp import web

from . import __version__, cassette, human, reports
from .browser import is_loopback
from .config import (
    ConfigError,
    Settings,
    check_cache_dir,
    load_settings,
    parse_duration,
)
from .observe import AccessLogger, access_log, loop_name, new_event_loop, setup_logging
from .store import Note, Store, StoreError, open_store
from .upstream import upstream_credential
from .urls import masked_url
from .workers import cannot_listen

log = logging.getLogger("seedproxy")


def _fail(message: str) -> None:
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


def _settings(config: str | None, flags: dict[str, Any], serving: bool = False) -> Settings:
    try:
        settings = load_settings(config, os.environ, flags, FLAG_NAMES)
        check_cache_dir(settings)
        if serving:
            upstream_credential(settings, os.environ, settings.proxy_tokens())
    except ConfigError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"auth.tokens_file: cannot read it: {exc.strerror or exc}")
    return settings


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
    settings = _settings(
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
            from .workers import StartError, supervise

            try:
                sys.exit(supervise(settings, lambda: click.echo(banner(settings))))
            except StartError as exc:
                _fail(str(exc))
        from .app import create_app

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
        _fail(str(exc))
    except OSError as exc:
        _fail(str(cannot_listen(settings.server, exc)))


# -- commands over the store ----------------------------------------------------------------


def store_command(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """A command that opens the configured store (``--config``, ``--cache-dir``) and runs
    ``fn(store, settings, **options)``; ``--json`` is left to the command."""

    @click.option("--config", "config", metavar="FILE", help="TOML config file.")
    @click.option("--cache-dir", help="Disk cache directory (default ./.seedproxy).")
    @functools.wraps(fn)
    def wrapper(config: str | None, cache_dir: str | None, **options: Any) -> None:
        settings = _settings(config, {"cache.dir": cache_dir})
        _with_store(settings, lambda store: fn(store, settings, **options))

    return wrapper


def _with_store(settings: Settings, work: Callable[[Store], Awaitable[None]]) -> None:
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
        _fail(str(exc))


def _add_counters(settings: Settings, deltas: dict[str, int]) -> None:
    _with_store(settings, lambda store: store.add_counters(deltas))


def _emit_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return reports.parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_command
async def stats(store: Store, settings: Settings, as_json: bool) -> None:
    """Hits, misses, drift, tokens and money saved, entries (all processes on this cache)."""
    data = await reports.stats(store, settings)
    if as_json:
        _emit_json(data)
        return
    rows = [list(row) for row in human.stat_rows(data)]
    click.echo(reports.text_table(["stat", "value"], rows))


@main.group(invoke_without_command=True)
@click.option("--model", help="Only this model.")
@click.option("--since", help="Only events after this: a duration ago (2h) or a date.")
@click.option("--limit", default=50, show_default=True, help="At most this many events.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--config", "config", metavar="FILE", help="TOML config file.")
@click.option("--cache-dir", help="Disk cache directory (default ./.seedproxy).")
@click.pass_context
def drift(
    ctx: click.Context,
    model: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    config: str | None,
    cache_dir: str | None,
) -> None:
    """Drift events, newest first; `seedproxy drift show ID` prints one with its diff."""
    ctx.obj = {"config": config, "cache_dir": cache_dir}
    if ctx.invoked_subcommand is not None:
        return
    ctx.invoke(
        _drift_list,
        config=config,
        cache_dir=cache_dir,
        model=model,
        since=since,
        limit=limit,
        as_json=as_json,
    )


@store_command
async def _drift_list(
    store: Store,
    settings: Settings,
    model: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    events = await reports.drift(store, model, _since(since), limit)
    if as_json:
        _emit_json(events)
        return
    if not events:
        click.echo("no drift events")
        return
    rows = [
        [
            e["id"],
            reports.iso(e["time"]),
            e["model"],
            e["reason"],
            human.shown(e["seed"], "none"),
            f"{human.fingerprint(e['cached_fingerprint'])} -> "
            f"{human.fingerprint(e['live_fingerprint'])}",
            f"{e['similarity']:.3f}",
        ]
        for e in events
    ]
    click.echo(
        reports.text_table(
            ["id", "time (UTC)", "model", "reason", "seed", "fingerprints", "similarity"], rows
        )
    )


def colored_diff(diff: str) -> str:
    lines = []
    # stored text made safe first, then our colours; split at \n only, as the diff was made
    for line in map(human.terminal_safe, diff.removesuffix("\n").split("\n")):
        if line.startswith(("+++", "---")):
            lines.append(click.style(line, bold=True))
        elif line.startswith("+"):
            lines.append(click.style(line, fg="green"))
        elif line.startswith("-"):
            lines.append(click.style(line, fg="red"))
        elif line.startswith("@@"):
            lines.append(click.style(line, fg="cyan"))
        else:
            lines.append(line)
    return "\n".join(lines)


@drift.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--config", "config", metavar="FILE", help="TOML config file.")
@click.option("--cache-dir", help="Disk cache directory (default ./.seedproxy).")
@click.pass_context
def drift_show(
    ctx: click.Context, event_id: str, as_json: bool, config: str | None, cache_dir: str | None
) -> None:
    """One drift event (its id, or a unique start of it) with its diff (red: cached,
    green: live)."""
    # store options go before or after `show`; the ones given after it win
    store = {"config": config or ctx.obj["config"], "cache_dir": cache_dir or ctx.obj["cache_dir"]}
    ctx.invoke(_drift_show, event_id=event_id, as_json=as_json, **store)


@store_command
async def _drift_show(store: Store, settings: Settings, event_id: str, as_json: bool) -> None:
    matches = [e for e in await store.events("drift", 10_000) if e["id"].startswith(event_id)]
    exact = [e for e in matches if e["id"] == event_id]
    if not matches:
        _fail(f"no drift event {event_id!r} (see `seedproxy drift`)")
    if len(matches) > 1 and not exact:
        _fail(
            f"{len(matches)} drift events start with {event_id!r}: "
            f"{', '.join(e['id'] for e in matches[:5])}; give more of the id"
        )
    event = (exact or matches)[0]
    if as_json:
        _emit_json(event)
        return
    safe = human.terminal_safe  # every field is stored data
    click.echo(
        safe(f"drift {event['id']}  {reports.iso(event['time'])} UTC  reason {event['reason']}")
    )
    click.echo(
        safe(f"model {event['model']}  {human.seed(event['seed'])}  endpoint {event['endpoint']}")
    )
    click.echo(
        safe(
            f"fingerprint {human.fingerprint(event['cached_fingerprint'])} (cached) -> "
            f"{human.fingerprint(event['live_fingerprint'])} (live)  "
            f"same: {human.yes_no(event['same_fingerprint'])}"
        )
    )
    click.echo(safe(f"similarity {event['similarity']:.4f}  key {event['key']}"))
    click.echo(human.divergence(event) + "\n")
    click.echo(colored_diff(event["diff"]))


@main.command()
@click.option("--model", help="Only this model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_command
async def fingerprints(store: Store, settings: Settings, model: str | None, as_json: bool) -> None:
    """Per model, each system_fingerprint seen live: first seen, last seen, count."""
    table = await reports.fingerprints(store, model)
    if as_json:
        _emit_json(table)
        return
    rows = [
        [
            name,
            human.fingerprint(s["fingerprint"]),
            reports.iso(s["first_seen"]),
            reports.iso(s["last_seen"]),
            s["count"],
        ]
        for name, seen in table.items()
        for s in seen
    ]
    click.echo(
        reports.text_table(
            ["model", "fingerprint", "first seen (UTC)", "last seen (UTC)", "count"], rows
        )
        if rows
        else "no fingerprints seen yet"
    )


DETERMINISM_EVENTS = 20  # drift events shown in `seedproxy determinism --html`


@main.command()
@click.option("--model", help="Only this model.")
@click.option("--since", help="Only comparisons after this (to the hour): 24h, or a date.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--html",
    "html_file",
    type=click.File("w", atomic=True),
    help="Write an HTML report: rates, fingerprint timelines, recent drift diffs.",
)
@click.option(
    "--fail-under",
    type=click.FloatRange(0, 1),
    metavar="RATE",
    help="Exit 1 when a model's same-fingerprint identical rate (0-1) is below RATE.",
)
@click.option(
    "--min-compared",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Gate only models with at least this many comparisons.",
)
@store_command
async def determinism(
    store: Store,
    settings: Settings,
    model: str | None,
    since: str | None,
    as_json: bool,
    html_file: Any,
    fail_under: float | None,
    min_compared: int,
) -> None:
    """How often the same request gives the same answer, per model and fingerprint."""
    from .dashboard.determinism import (
        RATE_HEADERS,
        across,
        interval,
        percent,
        rate_rows,
        report_page,
    )
    from .determinism import failing

    after = _since(since)
    rows = await reports.determinism(store, model, after)
    if html_file is not None:
        html_file.write(
            report_page(
                rows,
                await reports.fingerprints(store, model),
                await reports.drift(store, model, after, DETERMINISM_EVENTS),
                after,
                time.time(),
            )
        )
    if as_json:
        _emit_json({"since": after, "models": rows})
    elif not rows:
        click.echo(
            "no comparisons counted yet: the proxy compares a live answer with the stored one "
            "on refresh, Cache-Control: no-cache, verify samples, expired entries and "
            "fingerprint changes"
        )
    else:
        click.echo(
            reports.text_table(
                [
                    "model",
                    "source",
                    "compared",
                    "identical",
                    "identical rate",
                    "95% interval",
                    "median divergence (chars)",
                    "across fingerprints",
                ],
                [
                    [
                        r["model"],
                        r["source"],
                        r["compared"],
                        r["identical"],
                        percent(r["rate"]),
                        interval(r),
                        human.count(r["median_divergence_chars"]),
                        across(r),
                    ]
                    for r in rows
                ],
            )
        )
        click.echo()
        click.echo(
            reports.text_table(
                ["model", *RATE_HEADERS],
                [[r["model"], *line] for r in rows for line in rate_rows(r)],
            )
        )
    if fail_under is None:
        return
    gated = [r for r in rows if r["source"] == "traffic" and r["compared"] >= min_compared]
    if not gated:
        click.echo(
            f"determinism: no model has {min_compared} or more comparisons; nothing to gate",
            err=True,
        )
    below = failing(gated, fail_under, min_compared)
    for row in gated:
        if row["model"] in below:
            click.echo(
                f"determinism: {row['model']}: same-fingerprint identical rate "
                f"{percent(row['rate'])} ({row['identical']}/{row['compared']}) is below "
                f"{fail_under:.1%} (--fail-under)",
                err=True,
            )
    if below:
        sys.exit(1)


@main.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--model", help="Only this model.")
@click.option("--since", help="Only entries stored after this: a duration ago or a date.")
@store_command
async def export_cmd(
    store: Store, settings: Settings, file: str, model: str | None, since: str | None
) -> None:
    """Write entries as a cassette (readable JSON, no credentials) to FILE (- for stdout),
    as JSON Lines (one interaction a line) when FILE ends in .jsonl; an unchanged FILE is
    left as it is."""
    after = _since(since)
    entries = [
        entry
        for key in await store.keys()
        for entry in await store.variants(key)
        if (model is None or entry.model == model) and (after is None or entry.created >= after)
    ]
    entries.sort(key=lambda e: e.created)  # recording order
    repeats = cassette.Repeats(settings)
    shown = [cassette.interaction(e, settings, repeats=repeats) for e in entries]
    data = cassette.dumps_for(file, shown)
    if file == "-":
        sys.stdout.buffer.write(data)
    else:
        cassette.write(Path(file), data)
    kept = sum(item is not None for item in shown)
    click.echo(f"exported {human.plural(kept, 'entry', 'entries')} to {file}", err=True)
    if repeats.rekeyed:
        click.echo(
            f"{human.plural(repeats.rekeyed, 'entry was', 'entries were')} recorded under "
            "another upstream, namespace, query or seed mode than these settings give: the "
            "file shows their requests, and an import keys them as its settings do",
            err=True,
        )
    if kept < len(entries):
        click.echo(
            f"left out {human.plural(len(entries) - kept, 'entry', 'entries')} whose request "
            "the file already shows with the same fingerprint",
            err=True,
        )


@main.command("import")
@click.argument("file", type=click.File("rb"))
@store_command
async def import_cmd(store: Store, settings: Settings, file: BinaryIO) -> None:
    """Load a cassette, or a JSON Lines export (- for stdin); keys are computed with the
    current settings; importing the same file twice changes nothing."""
    try:
        recordings = await asyncio.to_thread(cassette.loads, file.read(), settings)
    except cassette.CassetteError as exc:
        _fail(f"{file.name}: {exc}")
    entries = [recording.entry for recording in recordings]
    added = replaced = 0
    for entry in entries:
        stored = [e for e in await store.variants(entry.key) if e.fingerprint == entry.fingerprint]
        if stored == [entry]:
            continue
        await store.put(entry)
        added, replaced = (added, replaced + 1) if stored else (added + 1, replaced)
    # indexed among the recent keys, so that a replay miss can name the nearest of them
    await store.note(
        [Note(e.key, e.endpoint, e.model, e.fingerprint, e.created, False) for e in entries]
    )
    there = len(entries) - added - replaced
    click.echo(
        f"imported {human.plural(len(entries), 'entry', 'entries')} from {file.name}: "
        f"{added} added, {there} already there" + (f", {replaced} replaced" if replaced else "")
    )


@main.command()
@click.option("--model", help="Only this model.")
@click.option("--fingerprint", help="Only this system_fingerprint ('null' for none).")
@click.option("--older-than", help="Only entries older than this duration (30d, 12h).")
@click.option("--all", "everything", is_flag=True, help="Every entry.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_command
async def purge(
    store: Store,
    settings: Settings,
    model: str | None,
    fingerprint: str | None,
    older_than: str | None,
    everything: bool,
    as_json: bool,
) -> None:
    """Remove entries and print what was removed. Needs a filter or --all."""
    if not (everything or model or fingerprint or older_than):
        _fail("purge: give --model, --fingerprint, --older-than or --all")
    try:
        cutoff = time.time() - parse_duration(older_than) if older_than else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    wanted_fp = None if fingerprint is None else (None if fingerprint == "null" else fingerprint)
    removed = []
    for key in await store.keys():
        victims = {
            e.fingerprint
            for e in await store.variants(key)
            if (model is None or e.model == model)
            and (fingerprint is None or e.fingerprint == wanted_fp)
            and (cutoff is None or e.created < cutoff)
        }
        if victims:
            gone = [e for e in await store.variants(key) if e.fingerprint in victims]
            await store.delete(key, victims)
            removed += gone
    if as_json:
        _emit_json(
            [
                {"key": e.key, "model": e.model, "fingerprint": e.fingerprint, "created": e.created}
                for e in removed
            ]
        )
        return
    for e in removed:
        click.echo(
            f"removed {e.key[:16]}  {e.model}  {human.fingerprint(e.fingerprint)}  "
            f"{reports.iso(e.created)} UTC"
        )
    click.echo(f"{human.plural(len(removed), 'entry', 'entries')} removed")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--config", "config", metavar="FILE", help="TOML config file ([redact] patterns).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def scan(paths: tuple[Path, ...], config: str | None, as_json: bool) -> None:
    """List the secrets in cassettes (ours and vcrpy's YAML), exports and cache
    directories (a directory is searched for *.json, *.jsonl, *.yaml, *.yml and caches;
    what is skipped is listed, with why). Streamed deltas are joined before they are
    searched. Exit 1 when there is any secret: for a pre-commit hook or CI. The built-in
    detectors always run, with any [redact] patterns."""
    from .redact import Redactor
    from .scan import Scanner

    try:
        settings = load_settings(config, os.environ)
    except ConfigError as exc:
        _fail(str(exc))
    scanner = Scanner(Redactor(True, settings.redact.patterns))
    try:
        found = [f for path in paths for f in scanner.path(path)]
    except (OSError, StoreError) as exc:
        _fail(f"cannot scan: {exc}")
    if as_json:
        _emit_json([f._asdict() for f in found])
    else:
        for f in found:
            click.echo(f"{f.file}: {f.entry}: {f.kind}: {f.excerpt}")
    for skipped in scanner.skipped:
        click.echo(f"skipped {skipped.path}: {skipped.reason}", err=True)
    if not as_json:
        click.echo(f"{human.plural(len(found), 'secret', 'secrets')} found", err=True)
    sys.exit(1 if found else 0)


@main.command()
@click.argument("file", type=click.File("rb"))
@click.option(
    "--path",
    "path",
    default="/v1/chat/completions",
    show_default=True,
    help="The endpoint the body is sent to.",
)
@click.option("--namespace", default="", help="X-Seedproxy-Namespace, if the client sets one.")
@click.option("--query", default="", help="The query string, if any (api-version=...).")
@click.option("--config", "config", metavar="FILE", help="TOML config file.")
@click.option("--upstream", help="Upstream base URL, as the proxy is given it.")
@click.option("--seed-mode", help="force | override | require | passthrough, as the proxy's.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def key(
    file: BinaryIO,
    path: str,
    namespace: str,
    query: str,
    config: str | None,
    upstream: str | None,
    seed_mode: str | None,
    as_json: bool,
) -> None:
    """Explain the cache key of the request body in FILE (- for stdin), offline, with the
    settings that change a key (--config, --upstream, --seed-mode, SEEDPROXY_*) as the
    running proxy has them."""
    from .call import endpoint_for
    from .errors import ProxyError
    from .keys import Where

    settings = _settings(config, {"upstream.base_url": upstream, "seed.mode": seed_mode})
    try:
        body = orjson.loads(file.read())
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        endpoint = endpoint_for(path)
        info = settings.keyer.explain(Where(endpoint.path, query, namespace), endpoint.seeded, body)
    except (ValueError, ProxyError) as exc:
        _fail(f"{file.name}: {getattr(exc, 'message', exc)}")
    if settings.cache.scope == "per-key":
        click.echo(
            "note: cache.scope is per-key; the proxy adds a hash of the client's "
            "credential to the namespace",
            err=True,
        )
    info["upstream"] = masked_url(info["upstream"])
    if as_json:
        _emit_json(info)
        return
    for name in ("key", "path", "query", "namespace", "upstream", "seed"):
        click.echo(f"{name:10} {human.shown(info[name], 'none')}")
    click.echo(
        f"{'ignored':10} {', '.join(info['ignored_fields']) or '-'}"
        f"  (configured: {', '.join(info['configured_ignore_fields'])})"
    )
    if info["ignore_paths"] or info["normalize_rules"]:
        click.echo(
            f"{'rules':10} ignore paths: {', '.join(info['ignore_paths']) or '-'}; "
            f"normalize rules: {info['normalize_rules']}"
        )
    click.echo(f"{'canonical':10} {info['canonical']}")


def _concurrency_levels(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> list[int] | None:
    """``--concurrency 1,4,16`` as distinct levels in ascending order."""
    if value is None:
        return None
    from .experiment import MAX_CONCURRENCY

    try:
        levels = sorted({int(part) for part in value.split(",")})
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers, e.g. 1,4") from None
    if levels[0] < 1 or levels[-1] > MAX_CONCURRENCY:
        raise click.BadParameter(f"each level from 1 to {MAX_CONCURRENCY}")
    return levels


@main.command()
@click.option("--model", required=True, help="Model to probe.")
@click.option("--prompt", default="Write a haiku about reproducibility.", show_default=True)
@click.option("--system", default=None, help="A system message, if any.")
@click.option("--runs", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--seed", default=12345, show_default=True, type=int)
@click.option("--no-seed", is_flag=True, help="Send no seed, to compare with seeded runs.")
@click.option("--temperature", type=float, default=None)
@click.option("--max-tokens", type=int, default=None)
@click.option(
    "--concurrency",
    callback=_concurrency_levels,
    metavar="C1,C2,...",
    help="The load experiment: --runs at each level, C requests in flight at once.",
)
@click.option("--logprobs", is_flag=True, help="Ask for logprobs: divergence in tokens too.")
@click.option(
    "--base-url", default=None, help="API base URL (default: $OPENAI_BASE_URL, else OpenAI's)."
)
@click.option(
    "--api-key-env",
    default="OPENAI_API_KEY",
    show_default=True,
    help="Environment variable holding the API key.",
)
@click.option(
    "--html",
    "html_file",
    type=click.File("w", atomic=True),
    help="Write an HTML report with red/green diff tables.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--expect-identical",
    is_flag=True,
    help="Exit 1 unless every run's output equals the first (a CI gate).",
)
@click.option(
    "--cache-dir",
    help="Add the runs' comparisons to this cache's counts (see `seedproxy determinism`).",
)
@click.option(
    "--config",
    "config",
    metavar="FILE",
    help="Add the runs' comparisons to the store this config names.",
)
def probe(
    model: str,
    prompt: str,
    system: str | None,
    runs: int,
    seed: int,
    no_seed: bool,
    temperature: float | None,
    max_tokens: int | None,
    concurrency: list[int] | None,
    logprobs: bool,
    base_url: str | None,
    api_key_env: str,
    html_file: Any,
    as_json: bool,
    expect_identical: bool,
    cache_dir: str | None,
    config: str | None,
) -> None:
    """Send one prompt N times live and report how deterministic the answers are; with
    --concurrency, N times at each level, and whether the answers depend on load."""
    import openai

    from . import experiment
    from .probe import (
        SeedMismatch,
        api_failure,
        comparison_counts,
        html_report,
        report,
        request_args,
    )
    from .probe import probe as run_probe

    if concurrency and max(concurrency) > runs:
        raise click.BadParameter(
            f"{max(concurrency)} in flight at once needs --runs {max(concurrency)} or more",
            param_hint="--concurrency",
        )

    # the store is checked before any paid call, and written once the runs are in
    counted = _settings(config, {"cache.dir": cache_dir}) if cache_dir or config else None
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    client = openai.OpenAI(
        base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
        api_key=os.environ.get(api_key_env) or "none",
    )
    sent_seed = None if no_seed else seed
    args = request_args(model, messages, sent_seed, temperature, max_tokens, logprobs)
    started = time.time()
    try:
        if concurrency:
            answers = asyncio.run(
                experiment.run(
                    lambda: openai.AsyncOpenAI(base_url=client.base_url, api_key=client.api_key),
                    args,
                    sent_seed,
                    runs,
                    concurrency,
                )
            )
        else:
            results = run_probe(client, args, runs, sent_seed)
    except openai.APIError as exc:
        _fail(f"probe: {api_failure(exc)}")
    except SeedMismatch as exc:
        _fail(f"probe: {exc}")
    settings = {
        "model": model,
        "system": system,
        "prompt": prompt,
        "runs": runs,
        "seed": sent_seed,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "base_url": masked_url(str(client.base_url)),
        "date": reports.iso(started) + " UTC",
    }
    if concurrency:
        data, levels = experiment.report(
            {**settings, "concurrency": concurrency, "logprobs": logprobs}, answers, logprobs
        )
        results = experiment.as_runs([a for c in concurrency for a in answers[c]])
    else:
        data = report(results, settings)
    if counted is not None:
        _add_counters(counted, comparison_counts(results, model, started))
    if html_file is not None:
        html_file.write(experiment.html_report(data, levels) if concurrency else html_report(data))
    if as_json:
        _emit_json(data)
    elif concurrency:
        click.echo(experiment.text_report(data, levels))
    else:
        summary = data["summary"]
        click.echo(
            reports.text_table(
                ["run", "fingerprint", "prompt", "completion", "same as #1", "similarity"],
                [
                    [
                        r.number,
                        human.fingerprint(r.fingerprint),
                        r.prompt_tokens,
                        r.completion_tokens,
                        "yes" if r.identical else "NO",
                        f"{r.similarity:.3f}",
                    ]
                    for r in results
                ],
            )
        )
        click.echo(
            f"\nidentical-output rate {summary['identical_rate']:.0%}  "
            f"distinct outputs {summary['distinct_outputs']}  "
            f"fingerprints {human.terminal_safe(', '.join(summary['distinct_fingerprints']))}  "
            f"mean similarity {summary['mean_similarity']:.3f}"
        )
    if expect_identical and len({r.text for r in results}) > 1:
        click.echo("probe: outputs differ (--expect-identical)", err=True)
        sys.exit(1)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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
    from .run import chosen_upstream, session_settings
    from .run import run as run_command
    from .runmodes import MODES

    cache_modes = ("record", "replay", "refresh", "passthrough")
    if cassette is not None and mode is not None and mode not in MODES:
        raise click.BadParameter(f"with --cassette, one of {', '.join(MODES)}", param_hint="--mode")
    if cassette is None and mode is not None and mode not in cache_modes:
        raise click.BadParameter(
            f"without --cassette, one of {', '.join(cache_modes)}", param_hint="--mode"
        )
    flags = {
        "cache.dir": cache_dir,
        "cache.mode": mode if cassette is None else None,
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
            (mode or "once") if cassette is not None else settings.cache.mode,
            upstream_line,
            summary_json,
        )
    )
