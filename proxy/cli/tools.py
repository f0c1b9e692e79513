"""Tools that need no running proxy: ``scan`` (secrets in files), ``key`` (a request's
cache key, offline), ``probe`` (one prompt sent live N times)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import click
import orjson

from .. import human, reports
from ..config import ConfigError, load_settings
from ..store import StoreError
from ..urls import masked_url
from .common import add_counters, emit_json, fail, settings_for


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--config", "config", metavar="FILE", help="TOML config file ([redact] patterns).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def scan(paths: tuple[Path, ...], config: str | None, as_json: bool) -> None:
    """List the secrets in cassettes (ours and vcrpy's YAML), exports and cache
    directories (a directory is searched for *.json, *.jsonl, *.yaml, *.yml and caches;
    what is skipped is listed, with why). Streamed deltas are joined before they are
    searched. Exit 1 when there is any secret: for a pre-commit hook or CI. The built-in
    detectors always run, with any [redact] patterns."""
    from ..redact import Redactor
    from ..scan import Scanner

    try:
        settings = load_settings(config, os.environ)
    except ConfigError as exc:
        fail(str(exc))
    scanner = Scanner(Redactor(True, settings.redact.patterns))
    try:
        found = [f for path in paths for f in scanner.path(path)]
    except (OSError, StoreError) as exc:
        fail(f"cannot scan: {exc}")
    if as_json:
        emit_json([f._asdict() for f in found])
    else:
        for f in found:
            click.echo(f"{f.file}: {f.entry}: {f.kind}: {f.excerpt}")
    for skipped in scanner.skipped:
        click.echo(f"skipped {skipped.path}: {skipped.reason}", err=True)
    if not as_json:
        click.echo(f"{human.plural(len(found), 'secret', 'secrets')} found", err=True)
    sys.exit(1 if found else 0)


@click.command()
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
    from ..call import endpoint_for
    from ..errors import ProxyError
    from ..keys import Where

    settings = settings_for(config, {"upstream.base_url": upstream, "seed.mode": seed_mode})
    try:
        body = orjson.loads(file.read())
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        endpoint = endpoint_for(path)
        info = settings.keyer.explain(Where(endpoint.path, query, namespace), endpoint.seeded, body)
    except (ValueError, ProxyError) as exc:
        fail(f"{file.name}: {getattr(exc, 'message', exc)}")
    if settings.cache.scope == "per-key":
        click.echo(
            "note: cache.scope is per-key; the proxy adds a hash of the client's "
            "credential to the namespace",
            err=True,
        )
    info["upstream"] = masked_url(info["upstream"])
    if as_json:
        emit_json(info)
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
    from ..experiment import MAX_CONCURRENCY

    try:
        levels = sorted({int(part) for part in value.split(",")})
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers, e.g. 1,4") from None
    if levels[0] < 1 or levels[-1] > MAX_CONCURRENCY:
        raise click.BadParameter(f"each level from 1 to {MAX_CONCURRENCY}")
    return levels


@click.command()
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

    from .. import experiment
    from ..probe import (
        SeedMismatch,
        api_failure,
        comparison_counts,
        html_report,
        report,
        request_args,
    )
    from ..probe import probe as run_probe

    if concurrency and max(concurrency) > runs:
        raise click.BadParameter(
            f"{max(concurrency)} in flight at once needs --runs {max(concurrency)} or more",
            param_hint="--concurrency",
        )

    # the store is checked before any paid call, and written once the runs are in
    counted = settings_for(config, {"cache.dir": cache_dir}) if cache_dir or config else None
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
        fail(f"probe: {api_failure(exc)}")
    except SeedMismatch as exc:
        fail(f"probe: {exc}")
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
        add_counters(counted, comparison_counts(results, model, started))
    if html_file is not None:
        html_file.write(experiment.html_report(data, levels) if concurrency else html_report(data))
    if as_json:
        emit_json(data)
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
