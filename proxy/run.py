"""A proxy for the life of a program (`seedproxy run -- CMD`) or of a test session (the
pytest plugin): on a free loopback port, in this process, with a cassette held in memory
(or the configured store) behind it, and an account of what it served."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import orjson
from aiohttp import web

from . import answers, cassette, drift
from .app import COUNTS, PIPELINE, create_app
from .config import Settings, UpstreamSettings, load_settings, with_overrides
from .errors import ProxyError
from .policy import SEED_MODE_HEADER, seed_mode
from .runmodes import BASE_URL, CacheMode, Plays, RunMode, drift_line, effective_mode, pointed
from .store import Entry, Store, open_store
from .store.memory import MemoryStore
from .urls import masked_url

PROXY_FAILED = 125  # like `docker run`: seedproxy itself failed, CMD's status is not known
NOT_EXECUTABLE, NOT_FOUND = 126, 127  # as a shell reports them


def chosen_upstream(
    given: str | None, given_as: str, env: Mapping[str, str]
) -> tuple[str | None, str]:
    """A session's upstream and where it came from: the one ``given`` (the flag named
    ``given_as``), else the user's own ``OPENAI_BASE_URL``, unless that is a proxy this
    process serves (a loop); else None: the config's ``upstream.base_url``, then OpenAI."""
    if given:
        return given, given_as
    own = env.get(BASE_URL)
    if own and own not in Session.serving:
        return own, BASE_URL
    return None, "upstream.base_url"


def session_settings(
    toml: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    flags: Mapping[str, Any],
    upstream: tuple[str | None, str],
) -> tuple[Settings, str]:
    """Settings for a session, with its upstream from :func:`chosen_upstream`, and the
    start-up line's account of that upstream (which one, and from where)."""
    url, source = upstream
    settings = load_settings(
        toml, env, {**flags, "upstream.base_url": url}, {"upstream.base_url": source}
    )
    if url is None and settings.upstream.base_url == UpstreamSettings.base_url:
        source = "default"
    return settings, f"upstream {masked_url(settings.upstream.base_url)} (from {source})"


SHOWN = 20  # lines of a list a summary shows before it says how many more there are


def first_of(lines: list[str], more: str) -> list[str]:
    """The first :data:`SHOWN` of ``lines``, then ``more`` with the count of the rest."""
    rest = len(lines) - SHOWN
    return lines if rest <= 0 else [*lines[:SHOWN], more.format(rest)]


def cassette_settings(settings: Settings) -> Settings:
    """``settings`` for a proxy serving a cassette: one person's recordings, so the shared
    scope (a per-key namespace would put a hash of a credential into every key)."""
    return with_overrides(settings, cache={"scope": "shared"})


@dataclass
class Result(Plays):
    """What a proxy served between :meth:`Session.begin` and :meth:`Session.end`."""

    cassette: str | None
    mode: CacheMode  # the cache mode the proxy ran in
    hits: int = 0
    recorded: int = 0
    live: int = 0
    tokens_live: int = 0
    drift: int = 0
    replay_misses: list[str] = field(default_factory=list)  # their messages
    drifts: list[dict[str, Any]] = field(default_factory=list)  # drift events, as stored
    written: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "cassette": self.cassette,
            "mode": self.mode,
            "written": self.written,
            "hits": self.hits,
            "recorded": self.recorded,
            "live_calls": self.live,
            "tokens_live": self.tokens_live,
            "drift_events": self.drift,
            "replay_misses": len(self.replay_misses),
            "replay_miss_messages": self.replay_misses,
            "unused_recordings": self.unused,
            "drift": [drift_record(event, self.cassette) for event in self.drifts],
        }

    def text(self) -> str:
        """One summary line, then one line per unused recording."""
        calls = "live call" if self.live == 1 else "live calls"
        line = (
            f"seedproxy: {self.hits} hits, {self.recorded} recorded, {self.live} {calls} "
            f"({self.tokens_live} tokens), {self.drift} drift events, "
            f"{len(self.replay_misses)} replay misses, {len(self.unused)} unused recordings"
            f" | mode {self.mode}"
        )
        if self.cassette is not None:
            line += f" | cassette {self.cassette} ({'written' if self.written else 'unchanged'})"
        unused = [f"seedproxy: unused recording {u}" for u in self.unused]
        return "\n".join(
            [
                line,
                *first_of(unused, "seedproxy: and {} more unused recordings"),
                *(f"seedproxy: drift {drift_line(event)}" for event in self.drifts),
            ]
        )


# What a report shows of a drift event; the divergence positions where the event has them.
DRIFT_FIELDS = (
    "endpoint",
    "model",
    "key",
    "reason",
    "path",
    "similarity",
    "cached_fingerprint",
    "live_fingerprint",
    "divergence_chars",
    "divergence_words",
    "shared_prefix_chars",
)


def drift_record(event: Mapping[str, Any], cassette: str | None) -> dict[str, Any]:
    """A drift event as a report gives it: where, what first differs, and a short diff."""
    shown = {name: event[name] for name in DRIFT_FIELDS if name in event}
    return {"cassette": cassette, **shown, "diff": drift.short_diff(event.get("diff", ""))}


def miss_language(caller: str, mode: RunMode, path: Path | None) -> answers.Language:
    """How a replay miss speaks to a session's user: the flags of ``caller`` ("pytest" or
    "run") that record, for the cassette at ``path`` served in run mode ``mode``."""
    if caller == "pytest":
        return answers.Language(
            f"replays the test's cassette {path} (--seedproxy-mode {mode}), so it will not "
            "call the upstream",
            "To record it, run the test with --seedproxy-mode record (adds it to the "
            "cassette) or --seedproxy-mode rewrite (records the cassette anew), or mark it "
            '@pytest.mark.seedproxy(mode="record"), with a valid API key.',
        )
    if path is not None:
        return answers.Language(
            f"replays the cassette {path} (seedproxy run --mode {mode}), so it will not "
            "call the upstream",
            "To record it, use seedproxy run --mode record (adds it to the cassette) or "
            "--mode rewrite (records the cassette anew) with a valid API key.",
        )
    return answers.Language(
        "runs in replay mode (seedproxy run --mode replay), so it will not call the upstream",
        "To record it, use seedproxy run --mode record with a valid API key.",
    )


class _Watched:
    """A store that reports every entry stored through it (what was recorded, and the
    tokens those live answers cost) and every drift event."""

    def __init__(self, inner: Store, stored: list[Entry], drifts: list[dict[str, Any]]) -> None:
        self._inner = inner
        self._stored = stored
        self._drifts = drifts

    async def put(self, entry: Entry) -> None:
        await self._inner.put(entry)
        self._stored.append(entry)

    async def add_event(self, event: Mapping[str, Any]) -> None:
        await self._inner.add_event(event)
        if event.get("kind") == "drift":
            self._drifts.append(dict(event))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Session:
    """One proxy app on 127.0.0.1 and the segments (a program's run, a test) it serves,
    each with its own cassette and mode. Every coroutine runs on the app's event loop."""

    serving: ClassVar[set[str]] = set()  # base URLs of this process's sessions (no loops)

    def __init__(self, settings: Settings, cassettes: bool, caller: str = "run") -> None:
        """``cassettes``: serve cassette files from memory, else the configured store;
        ``caller`` ("run" or "pytest"): whose flags a replay miss names."""
        self.caller = caller
        self.memory = MemoryStore(max_variants=1) if cassettes else None
        self.settings = cassette_settings(settings) if cassettes else settings
        inner: Store = self.memory if self.memory is not None else open_store(self.settings)
        self._stored: list[Entry] = []
        self._drifts: list[dict[str, Any]] = []
        watched = _Watched(inner, self._stored, self._drifts)
        self.app = create_app(self.settings, store=cast(Store, watched))
        self.app.on_response_prepare.append(self._answered)
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self._result = Result(None, self.settings.cache.mode)
        self._path: Path | None = None
        self._where: dict[str, tuple[str, str, str | None]] = {}  # key -> Recording.where
        self._before: Mapping[str, int] = {}
        self._dropped: set[tuple[str, bytes]] = set()  # recordings a rewrite did not load

    async def start(self) -> str:
        """Listen on a free loopback port; return the base URL clients use (``.../v1``)."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        Session.serving.add(self.base_url)
        return self.base_url

    async def stop(self) -> None:
        Session.serving.discard(self.base_url)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def begin(
        self, path: Path | None, mode: RunMode = RunMode.ONCE, exists: bool | None = None
    ) -> None:
        """Serve the cassette at ``path`` in run mode ``mode`` (None: the configured store,
        or nothing at all in a cassette session, in ``cache.mode``). ``exists``: whether
        the cassette counts as existing for ``once``, if not now."""
        proxy_mode, recordings = self.settings.cache.mode, list[cassette.Recording]()
        self._dropped = set()
        if path is not None:  # reading and checking a file: in a thread, off the loop
            proxy_mode, recordings = await asyncio.to_thread(self._load, path, mode, exists)
        if self.memory is not None:
            self.memory.replace(r.entry for r in recordings)
        self._path = path
        self._where = {r.entry.key: r.where for r in recordings}
        self._result = Result(
            str(path) if path is not None else None,
            proxy_mode,
            loaded={
                r.entry.key: f"#{n} {r.entry.endpoint} {r.entry.model}"
                for n, r in enumerate(recordings, 1)
            },
        )
        self._stored.clear()
        self._drifts.clear()
        self._before = dict(self.app[COUNTS].total)
        pipeline = self.app[PIPELINE]
        pipeline.untouched = False
        pipeline.mode = proxy_mode
        pipeline.language = miss_language(self.caller, mode, path)
        pipeline.repeats.reset()

    async def begin_untouched(self) -> None:
        """A segment with no cassette where every request goes to the upstream as sent and
        nothing is kept: a test session's unmarked test, as if no proxy were there."""
        await self.begin(None)
        self._result.mode = self.app[PIPELINE].mode = CacheMode.PASSTHROUGH
        self.app[PIPELINE].untouched = True

    def _load(
        self, path: Path, mode: RunMode, exists: bool | None
    ) -> tuple[CacheMode, list[cassette.Recording]]:
        there = path.exists()
        proxy_mode = effective_mode(mode, there if exists is None else exists)
        if not there:
            return proxy_mode, []
        if mode != RunMode.REWRITE:
            return proxy_mode, cassette.read(path, self.settings, one_per_key=True)
        with contextlib.suppress(cassette.CassetteError):  # an unreadable one is rewritten
            self._dropped = {
                _identity(r) for r in cassette.read(path, self.settings, one_per_key=True)
            }
        return proxy_mode, []

    def counts(self) -> Result:
        """The current segment's figures so far."""
        result = self._result
        now, before = self.app[COUNTS].total, self._before

        def delta(name: str) -> int:
            return now[name] - before.get(name, 0)

        result.hits = delta("hits")
        result.live = delta("misses") + delta("refreshes") + delta("bypasses") - delta("coalesced")
        result.drift = delta("drift_events")
        result.recorded = len(self._stored)
        result.tokens_live = sum(e.prompt_tokens + e.completion_tokens for e in self._stored)
        result.played |= {e.key for e in self._stored}
        result.drifts = list(self._drifts)
        return result

    async def current(self) -> Result:
        """:meth:`counts`, from another thread (through ``run_coroutine_threadsafe``)."""
        return self.counts()

    async def end(self) -> Result:
        """Close the segment: write its cassette if anything changed, return its figures."""
        # its registry notes indexed now, while the store holds its entries: not among the
        # next segment's recent keys, which a replay miss there names the nearest of
        await self.app[PIPELINE].flush()
        result = self.counts()
        path, memory = self._path, self.memory
        if path is not None and memory is not None and result.mode != CacheMode.REPLAY:
            # merging and writing a file (and the JSON of every entry): in a thread
            result.written = await asyncio.to_thread(
                self._write, path, memory.entries(), dict(self._where), self._dropped
            )
        self._path = None
        self.app[PIPELINE].mode = self.settings.cache.mode
        self.app[PIPELINE].untouched = False
        self.app[PIPELINE].language = answers.SERVER
        return result

    def _write(
        self,
        path: Path,
        entries: list[Entry],
        where: dict[str, tuple[str, str, str | None]],
        dropped: set[tuple[str, bytes]],
    ) -> bool:
        """Write the cassette, merged with what other processes (xdist workers) wrote to
        it since this segment read it: under a lock on its directory, the file is read
        again and its recordings this segment neither holds nor dropped (rewrite) are kept
        after its own. Never a silent loss when two processes record into one file."""
        with _locked(path.parent):
            theirs: list[cassette.Recording] = []
            if path.exists():
                mine = {e.key for e in entries}
                with contextlib.suppress(cassette.CassetteError):  # broken since: ours only
                    theirs = [
                        r
                        for r in cassette.read(path, self.settings, one_per_key=True)
                        if r.entry.key not in mine and _identity(r) not in dropped
                    ]
            ours = [cassette.Recording(e, *where.get(e.key, ("", "", None))) for e in entries]
            data = cassette.dump(path.name, [*ours, *theirs], self.settings).data
            return _save(path, data, bool(entries or theirs))

    async def _answered(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer, as it is sent: which recording it played, where a key came from
        (its query and namespace, for the cassette), and replay misses with their reasons."""
        key = response.headers.get("X-Seedproxy-Key")
        if key is not None and key not in self._where:
            query = self.settings.keyer.query(request.rel_url.raw_query_string, live=True)
            namespace = request.headers.get("X-Seedproxy-Namespace", "")
            self._where[key] = (query, namespace, _seed_mode(request))
        if key is not None and response.headers.get("X-Cache") in ("HIT", "REFRESH"):
            self._result.played.add(key)
        if response.status == 504 and isinstance(response, web.Response):
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                error = orjson.loads(cast(bytes, response.body))["error"]
                if error.get("code") == "cache_miss":
                    self._result.replay_misses.append(str(error["message"]))


def _identity(recording: cassette.Recording) -> tuple[str, bytes]:
    """A recording as itself: its key and its answer (one recorded again differs)."""
    return recording.entry.key, recording.entry.body


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on a cassette directory for a read-merge-write of one of its
    files (flock on the directory itself: no lock file left beside the cassettes, and
    released if the process dies)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _save(path: Path, data: bytes, anything: bool) -> bool:
    """Write a cassette unless it would be a new, empty one (nothing was recorded)."""
    return (anything or path.exists()) and cassette.write(path, data)


def _seed_mode(request: web.Request) -> str | None:
    """The seed mode a request asked for with ``X-Seedproxy-Seed-Mode`` (None: none, or
    one the proxy refused): its recording shows it, so its key is computed as it was."""
    header = request.headers.get(SEED_MODE_HEADER)
    with contextlib.suppress(ProxyError):
        return None if header is None else seed_mode(header, "", allowed=True)
    return None


def child_env(base: Mapping[str, str], base_url: str, mode: CacheMode) -> dict[str, str]:
    """The environment for the program: ``base``, pointed at the proxy."""
    return {**base, **pointed(base, base_url, mode)}


def _status(returncode: int) -> int:
    """A child's exit status as a shell reports it (128 + N when signal N ended it)."""
    return 128 - returncode if returncode < 0 else returncode


async def _run(
    settings: Settings, command: Sequence[str], path: Path | None, mode: RunMode, upstream_line: str
) -> tuple[int, Result | None]:
    session = Session(settings, cassettes=path is not None)
    try:
        try:
            base_url = await session.start()
            await session.begin(path, mode)
        except (cassette.CassetteError, OSError, RuntimeError) as exc:
            print(f"seedproxy run: the proxy did not start: {exc}", file=sys.stderr)
            return PROXY_FAILED, None
        print(
            f"seedproxy run: proxy {base_url} | {upstream_line} | mode {session.counts().mode}"
            + (f" | cassette {path}" if path is not None else ""),
            file=sys.stderr,
            flush=True,
        )
        env = child_env(os.environ, base_url, session.counts().mode)
        try:
            child = await asyncio.create_subprocess_exec(*command, env=env)
        except FileNotFoundError:
            print(f"seedproxy run: {command[0]}: command not found", file=sys.stderr)
            return NOT_FOUND, await session.end()
        except PermissionError:
            print(f"seedproxy run: {command[0]}: permission denied", file=sys.stderr)
            return NOT_EXECUTABLE, await session.end()
        loop = asyncio.get_running_loop()
        # Ctrl-C reaches the program from the terminal: it decides when to stop, and the
        # proxy serves it until then. A TERM sent to seedproxy alone is passed on.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGTERM, child.send_signal, signal.SIGTERM)
        try:
            returncode = await child.wait()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
        try:
            return _status(returncode), await session.end()
        except OSError as exc:
            print(f"seedproxy run: cannot write the cassette: {exc}", file=sys.stderr)
            return PROXY_FAILED, None
    finally:
        await session.stop()


def run(
    settings: Settings,
    command: Sequence[str],
    path: Path | None,
    mode: RunMode,
    upstream_line: str,
    summary_json: Path | None = None,
) -> int:
    """Run ``command`` through a proxy serving the cassette at ``path`` in run mode ``mode``
    (None: the configured store in ``cache.mode``); print the summary; return the exit
    status."""
    from .observe import new_event_loop

    loop = new_event_loop()
    try:
        status, result = loop.run_until_complete(_run(settings, command, path, mode, upstream_line))
    finally:
        loop.close()
    if result is not None:
        print(result.text(), file=sys.stderr)
        if summary_json is not None:
            data = {"exit_status": status, **result.to_json()}
            summary_json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    return status
