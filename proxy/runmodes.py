"""The names a test session shares with the pytest plugin, kept free of heavy imports: the
plugin is loaded into every pytest run in the environment, and one that uses no proxy
must not pay for importing one."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar


class CacheMode(enum.StrEnum):
    """The proxy's cache mode: ``cache.mode``, ``serve --mode``, ``run --mode`` without
    ``--cassette``. A str, so its value is what configs, flags and JSON show."""

    RECORD = "record"  # serve hits; on a miss go live and store
    REPLAY = "replay"  # serve hits; never go live
    REFRESH = "refresh"  # go live, compare with what is stored, store
    PASSTHROUGH = "passthrough"  # go live, store nothing


class RunMode(enum.StrEnum):
    """A cassette session's mode: ``run --mode`` with ``--cassette``, ``--seedproxy-mode``,
    ``@pytest.mark.seedproxy(mode=...)``; :func:`effective_mode` gives its cache mode."""

    ONCE = "once"  # record a missing cassette, replay an existing one strictly
    REPLAY = "replay"
    RECORD = "record"  # add to the cassette
    REWRITE = "rewrite"  # record the cassette anew
    REFRESH = "refresh"


Mode = TypeVar("Mode", CacheMode, RunMode)


def parse_mode(kind: type[Mode], value: Any) -> Mode | None:
    """``value`` (a user's text) as one of ``kind``'s modes; None when it names none, for
    the caller to say so in its own words."""
    try:
        return kind(value)
    except ValueError:
        return None


# What SDKs are given as OPENAI_API_KEY when replaying without one: they refuse to start
# without a key, and a replay needs none. Plainly not a key, so it is never mistaken for one.
PLACEHOLDER_KEY = "seedproxy-replay-no-key"
BASE_URL = "OPENAI_BASE_URL"  # the user's upstream when set; the proxy's for a session
ENV = (BASE_URL, "OPENAI_API_BASE", "OPENAI_API_KEY")  # what a session points at the proxy


def effective_mode(mode: RunMode, exists: bool) -> CacheMode:
    """The proxy's cache mode for a run mode, given whether the cassette exists."""
    if mode == RunMode.ONCE:
        return CacheMode.REPLAY if exists else CacheMode.RECORD
    if mode == RunMode.REWRITE:
        return CacheMode.RECORD
    return CacheMode(mode)


def pointed(base: Mapping[str, str], base_url: str, mode: CacheMode) -> dict[str, str]:
    """The variables that point a program at the proxy: its URL under the names the SDKs
    read, and a placeholder key when replaying without one."""
    env = {BASE_URL: base_url, "OPENAI_API_BASE": base_url}
    if mode == CacheMode.REPLAY and not base.get("OPENAI_API_KEY"):
        env["OPENAI_API_KEY"] = PLACEHOLDER_KEY
    return env


def drift_line(event: Mapping[str, Any]) -> str:
    """A drift event (or its report record) in one line: the call, and where its outputs
    first differ."""
    return (
        f"{event.get('endpoint')} {event.get('model')}: first difference at "
        f"{event.get('path') or '(outputs)'} (similarity {event.get('similarity')})"
    )


@dataclass(kw_only=True)
class Plays:
    """The recordings a cassette loaded and which were played: the rest are unused. A
    session's, and (added up over tests and xdist workers) the pytest plugin's per file."""

    loaded: dict[str, str] = field(default_factory=dict)  # key -> "#n endpoint model"
    played: set[str] = field(default_factory=set)  # keys served, compared or recorded

    @property
    def unused(self) -> list[str]:
        """The recordings loaded and never played."""
        return [what for key, what in self.loaded.items() if key not in self.played]

    def add(self, other: Plays) -> None:
        self.loaded.update(other.loaded)
        self.played |= other.played
