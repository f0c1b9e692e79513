"""The names a test session shares with the pytest plugin, kept free of heavy imports: the
plugin is loaded into every pytest run in the environment, and one that uses no proxy
must not pay for importing one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

# The proxy's cache mode (cache.mode, serve --mode, run --mode without --cassette) and a
# test session's run mode (run --mode with --cassette, --seedproxy-mode): each spelled once.
CacheMode = Literal["record", "replay", "refresh", "passthrough"]
CACHE_MODES: Final[tuple[CacheMode, ...]] = get_args(CacheMode)
RunMode = Literal["once", "replay", "record", "rewrite", "refresh"]
MODES: Final[tuple[RunMode, ...]] = get_args(RunMode)
# What SDKs are given as OPENAI_API_KEY when replaying without one: they refuse to start
# without a key, and a replay needs none. Plainly not a key, so it is never mistaken for one.
PLACEHOLDER_KEY = "seedproxy-replay-no-key"
BASE_URL = "OPENAI_BASE_URL"  # the user's upstream when set; the proxy's for a session
ENV = (BASE_URL, "OPENAI_API_BASE", "OPENAI_API_KEY")  # what a session points at the proxy


def effective_mode(mode: str, exists: bool) -> str:
    """The proxy's cache mode for a run mode, given whether the cassette exists."""
    if mode == "once":
        return "replay" if exists else "record"
    if mode == "rewrite":
        return "record"
    return mode


def pointed(base: Mapping[str, str], base_url: str, mode: str) -> dict[str, str]:
    """The variables that point a program at the proxy: its URL under the names the SDKs
    read, and a placeholder key when replaying without one."""
    env = {BASE_URL: base_url, "OPENAI_API_BASE": base_url}
    if mode == "replay" and not base.get("OPENAI_API_KEY"):
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
