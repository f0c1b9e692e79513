"""The ``seedproxy`` command line, one module per group of commands: serving and running
(``serving``), the commands over the store (``stores``), offline and live tools (``tools``)."""

from __future__ import annotations

import click

from .. import __version__
from .serving import banner, run, serve
from .stores import (
    colored_diff,
    determinism,
    drift,
    export_cmd,
    fingerprints,
    import_cmd,
    purge,
    stats,
)
from .tools import key, probe, scan

__all__ = ["banner", "colored_diff", "main"]


@click.group()
@click.version_option(__version__, prog_name="seedproxy")
def main() -> None:
    """seedproxy: reproducible, cached OpenAI calls with drift reports."""


for command in (serve, run, stats, drift, fingerprints, determinism, export_cmd, import_cmd):
    main.add_command(command)
for command in (purge, scan, key, probe):
    main.add_command(command)
