"""The commands over the configured store: stats, drift, fingerprints, determinism,
export, import, purge. They parse options and print; the store work is ``storeops``'s."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import click

from .. import cassette, human, reports, storeops
from ..config import Settings, parse_duration
from ..store import Store
from .common import emit_json, fail, since_time, store_command


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_command
async def stats(store: Store, settings: Settings, as_json: bool) -> None:
    """Hits, misses, drift, tokens and money saved, entries (all processes on this cache)."""
    data = await reports.stats(store, settings)
    if as_json:
        emit_json(data)
        return
    rows = [list(row) for row in human.stat_rows(data)]
    click.echo(reports.text_table(["stat", "value"], rows))


@click.group(invoke_without_command=True)
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
    events = await reports.drift(store, model, since_time(since), limit)
    if as_json:
        emit_json(events)
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
        fail(f"no drift event {event_id!r} (see `seedproxy drift`)")
    if len(matches) > 1 and not exact:
        fail(
            f"{len(matches)} drift events start with {event_id!r}: "
            f"{', '.join(e['id'] for e in matches[:5])}; give more of the id"
        )
    event = (exact or matches)[0]
    if as_json:
        emit_json(event)
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


@click.command()
@click.option("--model", help="Only this model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_command
async def fingerprints(store: Store, settings: Settings, model: str | None, as_json: bool) -> None:
    """Per model, each system_fingerprint seen live: first seen, last seen, count."""
    table = await reports.fingerprints(store, model)
    if as_json:
        emit_json(table)
        return
    rows = reports.fingerprint_rows(table)
    click.echo(
        reports.text_table(reports.FINGERPRINT_HEADERS, rows)
        if rows
        else "no fingerprints seen yet"
    )


DETERMINISM_EVENTS = 20  # drift events shown in `seedproxy determinism --html`


@click.command()
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
    from ..dashboard.determinism import (
        RATE_HEADERS,
        across,
        interval,
        percent,
        rate_rows,
        report_page,
    )
    from ..determinism import failing

    after = since_time(since)
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
        emit_json({"since": after, "models": rows})
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


@click.command("export")
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
    dumped, total = await storeops.exported(store, settings, file, model, since_time(since))
    if file == "-":
        sys.stdout.buffer.write(dumped.data)
    else:
        cassette.write(Path(file), dumped.data)
    kept = dumped.kept
    click.echo(f"exported {human.plural(kept, 'entry', 'entries')} to {file}", err=True)
    if dumped.rekeyed:
        click.echo(
            f"{human.plural(dumped.rekeyed, 'entry was', 'entries were')} recorded under "
            "another upstream, namespace, query or seed mode than these settings give: the "
            "file shows their requests, and an import keys them as its settings do",
            err=True,
        )
    if kept < total:
        click.echo(
            f"left out {human.plural(total - kept, 'entry', 'entries')} whose request "
            "the file already shows with the same fingerprint",
            err=True,
        )


@click.command("import")
@click.argument("file", type=click.File("rb"))
@store_command
async def import_cmd(store: Store, settings: Settings, file: BinaryIO) -> None:
    """Load a cassette, or a JSON Lines export (- for stdin); keys are computed with the
    current settings; importing the same file twice changes nothing."""
    try:
        done = await storeops.imported(store, file.read(), settings)
    except cassette.CassetteError as exc:
        fail(f"{file.name}: {exc}")
    click.echo(
        f"imported {human.plural(done.total, 'entry', 'entries')} from {file.name}: "
        f"{done.added} added, {done.there} already there"
        + (f", {done.replaced} replaced" if done.replaced else "")
    )


@click.command()
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
        fail("purge: give --model, --fingerprint, --older-than or --all")
    try:
        cutoff = time.time() - parse_duration(older_than) if older_than else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    removed = await storeops.purged(store, model, fingerprint, cutoff)
    if as_json:
        emit_json(
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
