"""The pytest plugin: ``@pytest.mark.seedproxy`` gives a test its own cassette, recorded
the first time and replayed offline after that, whatever language or client the code
under test uses to reach the API.

Installed, the plugin is loaded into every pytest run in the environment, so unused it is
inert: it imports nothing heavy, starts nothing and changes no variable. A proxy starts
when the first marked test is about to run, and points ``OPENAI_BASE_URL`` at itself for
marked tests only. A project that sets any seedproxy option (command line or ini) has
opted in: the proxy then starts before conftest files and test modules are imported, so
that clients made at import time pick it up; unmarked tests get the environment back and
their requests go on to the upstream as they were sent, unrecorded.

One proxy per pytest process (each xdist worker has its own). It runs in a thread with its
own event loop; each test switches the cassette it serves (and its mode) through that loop.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Coroutine, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from .runmodes import ENV, Plays, RunMode, drift_line, effective_mode, parse_mode, pointed

if TYPE_CHECKING:
    from .run import Result, Session

T = TypeVar("T")
MARKER = "seedproxy"
SUFFIX = ".json"
SUFFIXES = (SUFFIX, ".jsonl")
# A file name's limit is 255 bytes on the common file systems; this leaves room for the
# suffix and for the temporary name an atomic write uses beside it.
MAX_NAME_BYTES = 200
DIGEST = 12  # hex characters of the full test id that a lossy file name ends with
_UNSAFE = re.compile(r"""[\x00-\x1f\x7f\s<>:"'/\\|?*%]""")
# The options that opt a project in (their ini names are these, too).
OPTIONS = ("seedproxy_mode", "seedproxy_upstream", "seedproxy_fail_unused", "seedproxy_drift")
DRIFT = ("warn", "fail")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("seedproxy", "seedproxy: recorded OpenAI API answers")
    group.addoption(
        "--seedproxy-mode",
        choices=[mode.value for mode in RunMode],  # argparse shows choices by repr
        help="once (default: record a missing cassette, replay an existing one strictly), "
        "replay, record, rewrite or refresh.",
    )
    group.addoption(
        "--seedproxy-upstream",
        metavar="URL",
        help="The API to record from (default: $OPENAI_BASE_URL, else the config's "
        "upstream.base_url, else OpenAI).",
    )
    group.addoption(
        "--seedproxy-fail-unused",
        action="store_true",
        default=None,
        help="Fail the run when a cassette holds recordings no test played, or a cassette "
        "file no test uses.",
    )
    group.addoption(
        "--seedproxy-drift",
        choices=DRIFT,
        help="warn (default): list drift in the summary; fail: drift also fails its test.",
    )
    parser.addini(
        "seedproxy_mode", "seedproxy's default --seedproxy-mode.", default=RunMode.ONCE.value
    )
    parser.addini("seedproxy_upstream", "seedproxy's default --seedproxy-upstream.", default="")
    parser.addini(
        "seedproxy_fail_unused", "seedproxy's --seedproxy-fail-unused.", type="bool", default=False
    )
    parser.addini("seedproxy_drift", "seedproxy's default --seedproxy-drift.", default="warn")
    parser.addini("seedproxy_config", "A seedproxy TOML config file for the proxy.", default="")


class _Loop:
    """An event loop in a daemon thread; :meth:`run` runs a coroutine there and waits.
    (asyncio is imported here, as everything heavy is: a run that uses no proxy must not
    pay for it.)"""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="seedproxy", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@dataclass
class _Proxy:
    """This process's running proxy."""

    loop: _Loop
    session: Session
    line: str  # its upstream (and where that came from) and mode, for the report


@dataclass
class _Cassette(Plays):
    """What this run did with one cassette file, over every test that used it."""

    written: bool = False


@dataclass
class _State:
    mode: RunMode
    fail_unused: bool
    drift: str
    rootpath: Path
    user_env: dict[str, str | None]  # the variables as the user set them
    started_ns: int  # when the run started (xdist: the controller's clock)
    proxy: _Proxy | None = None
    ours: dict[str, str] = field(default_factory=dict)  # what an early start set for all
    existed: dict[Path, bool] = field(default_factory=dict)  # when the run started
    cassettes: dict[str, _Cassette] = field(default_factory=dict)  # by path, as shown
    lines: set[str] = field(default_factory=set)  # each proxy's report line (xdist: many)
    drifted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # test -> records
    unused_files: set[str] = field(default_factory=set)  # cassette files no test uses

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self.proxy is not None
        return self.proxy.loop.run(coro)

    def shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.rootpath))
        except ValueError:
            return str(path)

    def add(self, path: str, result: Result) -> None:
        seen = self.cassettes.setdefault(path, _Cassette())
        seen.add(result)
        seen.written |= result.written

    def unused(self) -> list[str]:
        return [
            f"{path} {what}"
            for path, seen in sorted(self.cassettes.items())
            for what in seen.unused
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "lines": sorted(self.lines),
            "drifted": self.drifted,
            "unused_files": sorted(self.unused_files),
            "cassettes": {
                path: {
                    "loaded": seen.loaded,
                    "played": sorted(seen.played),
                    "written": seen.written,
                }
                for path, seen in self.cassettes.items()
            },
        }

    def merge(self, data: dict[str, Any]) -> None:
        self.lines.update(data["lines"])
        self.drifted.update(data["drifted"])
        self.unused_files.update(data["unused_files"])
        for path, seen in data["cassettes"].items():
            mine = self.cassettes.setdefault(path, _Cassette())
            mine.add(Plays(loaded=seen["loaded"], played=set(seen["played"])))
            mine.written |= seen["written"]


STATE = pytest.StashKey[_State]()


def _option(config: pytest.Config, name: str) -> Any:
    """A command-line option, also before the command line is fully parsed (when an
    opted-in proxy starts, ahead of conftest files)."""
    value = getattr(config.option, name, None)
    return value if value is not None else getattr(config.known_args_namespace, name, None)


def _setting(config: pytest.Config, name: str) -> Any:
    """An option's value: the command line's, else the ini file's (or its default)."""
    value = _option(config, name)
    return config.getini(name) if value is None else value


def opted_in(config: pytest.Config) -> bool:
    """Whether the project asked for seedproxy: a ``--seedproxy-*`` option or a
    ``seedproxy_*`` ini option (``-o`` included) is set."""
    if any(_option(config, name) is not None for name in OPTIONS):
        return True
    overrides = getattr(config.known_args_namespace, "override_ini", None) or ()
    given = [*config.inicfg, *(o.partition("=")[0] for o in overrides)]
    return any(name.startswith("seedproxy_") for name in given)


def _is_xdist_controller(config: pytest.Config) -> bool:
    """Whether this process only hands tests to xdist workers (which run the proxies)."""
    return bool(_option(config, "numprocesses")) and "PYTEST_XDIST_WORKER" not in os.environ


def _state(config: pytest.Config) -> _State:
    """This run's state, made at its first use (an unused plugin makes none)."""
    state = config.stash.get(STATE, None)
    if state is not None:
        return state
    given, drift = _setting(config, "seedproxy_mode"), _setting(config, "seedproxy_drift")
    mode = parse_mode(RunMode, given)
    if mode is None:
        raise pytest.UsageError(
            f"seedproxy_mode: must be one of {', '.join(RunMode)}, got {given!r}"
        )
    if drift not in DRIFT:
        raise pytest.UsageError(f"seedproxy_drift: must be warn or fail, got {drift!r}")
    state = _State(
        mode,
        bool(_setting(config, "seedproxy_fail_unused")),
        drift,
        config.rootpath,
        {name: os.environ.get(name) for name in ENV},
        _run_start(config),
    )
    config.stash[STATE] = state
    return state


STARTED = pytest.StashKey[int]()


def _run_start(config: pytest.Config) -> int:
    """When this run started: an xdist worker has the controller's time, so that all of
    them agree on which cassettes this run wrote (their files are newer)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "seedproxy_started_ns" in workerinput:
        return int(workerinput["seedproxy_started_ns"])
    return config.stash.setdefault(STARTED, time.time_ns())


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: each worker learns when the run started."""
    node.workerinput["seedproxy_started_ns"] = _run_start(node.config)


def _written_since(path: Path, started_ns: int) -> bool:
    """Whether the cassette file was written during this run (by any process); a time in
    the future (a checkout from a skewed clock) is not this run's."""
    try:
        return started_ns <= path.stat().st_mtime_ns <= time.time_ns()
    except FileNotFoundError:
        return False


def _set_env(values: Mapping[str, str | None]) -> dict[str, str | None]:
    """Set these variables (None: unset them); return what they were."""
    before = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return before


def _start(config: pytest.Config, state: _State) -> _Proxy:
    """Start this process's proxy, its upstream the one given, else the user's own
    ``OPENAI_BASE_URL`` (as it was before this plugin changed anything)."""
    if state.proxy is not None:
        return state.proxy
    from .config import ConfigError
    from .run import Session, chosen_upstream, session_settings

    user = {name: value for name, value in state.user_env.items() if value is not None}
    given = chosen_upstream(
        _setting(config, "seedproxy_upstream") or None, "--seedproxy-upstream", user
    )
    toml = config.getini("seedproxy_config")
    try:
        settings, upstream = session_settings(
            config.rootpath / toml if toml else None, os.environ, {}, given
        )
    except ConfigError as exc:
        raise pytest.UsageError(f"seedproxy: {exc}") from None
    loop = _Loop()
    session = Session(settings, cassettes=True, caller="pytest")
    loop.run(session.start())
    state.proxy = _Proxy(loop, session, f"{upstream} | mode {state.mode}")
    state.lines.add(state.proxy.line)
    return state.proxy


def _start_early(config: pytest.Config) -> None:
    """An opted-in project: start the proxy now, before test modules are imported, and
    point the environment at it, so that clients made at import time use it."""
    if STATE in config.stash or not opted_in(config):
        return
    state = _state(config)
    if _is_xdist_controller(config):
        return
    proxy = _start(config, state)
    # for every test: as if its cassette existed (once replays it), so a replay needs no key
    everywhere = effective_mode(state.mode, exists=True)
    state.ours = pointed(os.environ, proxy.session.base_url, everywhere)
    _set_env(state.ours)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    _start_early(early_config)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "seedproxy(cassette=None, mode=None): serve the test's OpenAI API calls from a "
        "cassette, <test dir>/cassettes/<module>/<test>.json, or the one named.",
    )
    _start_early(config)  # when the plugin came late (a conftest's pytest_plugins)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or state.proxy is None:
        return
    state.call(state.proxy.session.stop())
    state.proxy.loop.close()
    _set_env(_ours_undone(state))


def _ours_undone(state: _State) -> dict[str, str | None]:
    """The user's values back, for each variable that still holds what we set for all
    (one the user's own code changed since is left as it is)."""
    return {
        name: state.user_env[name]
        for name, value in state.ours.items()
        if os.environ.get(name) == value
    }


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(STATE, None)
    if state is None or state.proxy is None:
        return None
    return f"seedproxy: proxy {state.proxy.session.base_url} | {state.proxy.line}"


def cassette_name(item: pytest.Item, name: str | None) -> str:
    """A file name for the cassette: ``name``, else the test's (its class's too). A name
    that is not a safe file name as it is (parametrized ids have ``/``, spaces, ``?``) has
    those characters replaced and ends with a digest of the whole name, so two tests never
    share a file by accident; at most :data:`MAX_NAME_BYTES` bytes before the suffix
    (``.json``, or ``.jsonl`` for a named cassette written as JSON Lines)."""
    if name is None:
        cls = getattr(item, "cls", None)
        name = (f"{cls.__name__}." if cls is not None else "") + item.name
    suffix = next((end for end in SUFFIXES if name.endswith(end)), SUFFIX)
    name = name.removesuffix(suffix)
    safe = _UNSAFE.sub("-", name)
    encoded = safe.encode("utf-8", "replace")
    if safe == name and len(encoded) <= MAX_NAME_BYTES and encoded.decode() == safe:
        return name + suffix
    import hashlib

    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST]
    head = encoded[: MAX_NAME_BYTES - DIGEST - 1].decode("utf-8", "ignore")
    return f"{head}-{digest}{suffix}"


def _marker_mode(item: pytest.Item, marker: pytest.Mark) -> RunMode | None:
    """The marker's ``mode=``, checked, with its arguments."""
    unknown = set(marker.kwargs) - {"cassette", "mode"}
    if marker.args or unknown:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.seedproxy takes only cassette=NAME and mode=MODE "
            f"(got {', '.join([*map(repr, marker.args), *sorted(unknown)])})"
        )
    given = marker.kwargs.get("mode")
    mode = None if given is None else parse_mode(RunMode, given)
    if given is not None and mode is None:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.seedproxy(mode=...) must be one of "
            f"{', '.join(RunMode)}, got {given!r}"
        )
    return mode


def cassette_path(item: pytest.Item, marker: pytest.Mark) -> Path:
    """``<test file's dir>/cassettes/<module>/<name>.json``."""
    _marker_mode(item, marker)
    return (
        item.path.parent
        / "cassettes"
        / item.path.stem
        / cassette_name(item, marker.kwargs.get("cassette"))
    )


def _proxy_for_test(config: pytest.Config) -> tuple[_State, _Proxy]:
    """The state and the proxy, started now if it is not yet running (a bad setting ends
    the run with its message, not one error per test)."""
    try:
        state = _state(config)
        return state, _start(config, state)
    except pytest.UsageError as exc:
        pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(autouse=True)
def _seedproxy_cassette(request: pytest.FixtureRequest) -> Iterator[None]:
    """Serve a marked test's cassette while it runs, the environment pointed at the proxy.
    An unmarked test sees the environment as the user set it and, if the proxy started
    early, its requests go on to the upstream untouched."""
    item = request.node
    marker = item.get_closest_marker(MARKER)
    state = request.config.stash.get(STATE, None)
    if marker is None:
        if state is None or state.proxy is None:
            yield
            return
        session = state.proxy.session
        before = _set_env(_ours_undone(state))
        state.call(session.begin_untouched())
        try:
            yield
        finally:
            state.call(session.end())
            _set_env(before)
        return
    state, proxy = _proxy_for_test(request.config)
    path = cassette_path(item, marker)
    mode = _marker_mode(item, marker) or state.mode
    # Whether it existed before the run, and whether this run wrote it, whichever process
    # (xdist worker) did: rewrite empties a cassette once per run, and once records a
    # missing one; tests sharing it add to it after that.
    written = _written_since(path, state.started_ns)
    first = path not in state.existed
    if first:
        state.existed[path] = path.exists() and not written
    if mode == RunMode.REWRITE and not (first and not written):
        mode = RunMode.RECORD
    state.call(proxy.session.begin(path, mode, state.existed[path]))
    proxy_mode = state.call(proxy.session.current()).mode
    before = _set_env(pointed(os.environ, proxy.session.base_url, proxy_mode))
    try:
        yield
    finally:
        _set_env(before)
        state.add(state.shown(path), state.call(proxy.session.end()))


class Recordings:
    """What the ``seedproxy`` fixture gives a test: the proxy's base URL (already in
    ``OPENAI_BASE_URL``), the test's cassette and mode, and its counts so far."""

    def __init__(self, state: _State, cassette: Path) -> None:
        assert state.proxy is not None
        self._state, self._session = state, state.proxy.session
        self.base_url = self._session.base_url
        self.cassette = cassette

    def _counts(self) -> Result:
        return self._state.call(self._session.current())

    @property
    def mode(self) -> str:
        """The proxy's cache mode for this test (``once`` becomes record or replay), as a
        plain string."""
        return str(self._counts().mode)

    @property
    def hits(self) -> int:
        return self._counts().hits

    @property
    def recorded(self) -> int:
        return self._counts().recorded

    @property
    def live(self) -> int:
        """Calls that went to the upstream."""
        return self._counts().live


@pytest.fixture
def seedproxy(request: pytest.FixtureRequest, _seedproxy_cassette: None) -> Recordings:
    """The proxy serving this test: its base URL, and the test's hits, recorded, live."""
    marker = request.node.get_closest_marker(MARKER)
    state = request.config.stash.get(STATE, None)
    if marker is None or state is None:
        pytest.fail("the seedproxy fixture serves marked tests: add @pytest.mark.seedproxy")
    return Recordings(state, cassette_path(request.node, marker))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A replay miss fails its test, with the reason, even if the test caught the error;
    drift is kept for the summary, and fails its test with ``--seedproxy-drift=fail``."""
    report = yield
    state = item.config.stash.get(STATE, None)
    if call.when != "call" or state is None or state.proxy is None:
        return report
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return report
    from .run import drift_record

    result = state.call(state.proxy.session.current())
    misses = result.replay_misses
    if misses:
        text = "\n\n".join(misses)
        report.sections.append(("seedproxy replay misses", text))
        if report.passed:
            report.outcome = "failed"
            report.longrepr = (
                f"seedproxy: {len(misses)} request(s) had no recording (the test caught "
                f"the error, the run does not):\n{text}"
            )
    if result.drifts:
        cassette = state.shown(cassette_path(item, marker))
        records = [drift_record(event, cassette) for event in result.drifts]
        state.drifted[item.nodeid] = records
        text = _drift_text(records)
        report.sections.append(("seedproxy drift", text))
        if state.drift == "fail" and report.passed:
            report.outcome = "failed"
            report.longrepr = f"seedproxy: the live answers differ from the recordings:\n{text}"
    return report


def _drift_text(records: list[dict[str, Any]]) -> str:
    """A test's drift records for people: the cassette, then per call its endpoint and
    model, where the outputs first differ, and a short diff."""
    lines = [f"cassette {records[0]['cassette']}"]
    for record in records:
        lines.append(f"  {drift_line(record)}")
        lines.extend(f"    {line}" for line in record["diff"].splitlines())
    return "\n".join(lines)


def _narrowed(config: pytest.Config) -> bool:
    """Whether this run selects some of the tests only (``-k``, ``-m``, node ids,
    ``--deselect``, ``--lf``): then a cassette no collected test uses may be another's."""
    o = config.option
    chosen = (getattr(o, name, None) for name in ("keyword", "markexpr", "deselect", "lf"))
    return any(chosen) or any("::" in str(arg) for arg in config.args)


def pytest_collection_finish(session: pytest.Session) -> None:
    """With --seedproxy-fail-unused, the cassette files in the collected modules'
    cassette directories that no collected test uses (a renamed test's old one)."""
    state = session.config.stash.get(STATE, None)
    if state is None or not state.fail_unused or _narrowed(session.config):
        return
    folders, used = set(), set()
    for item in session.items:
        folders.add(item.path.parent / "cassettes" / item.path.stem)
        marker = item.get_closest_marker(MARKER)
        if marker is not None:
            used.add(cassette_path(item, marker))
    state.unused_files.update(
        state.shown(path)
        for folder in folders
        if folder.is_dir()
        for path in folder.iterdir()
        if path.suffix in SUFFIXES and path not in used
    )


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist: a worker's cassettes, for the summary."""
    output = getattr(node, "workeroutput", {}).get("seedproxy")
    if output is not None:
        _state(node.config).merge(output)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE, None)
    if state is None:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller sums up
        workeroutput["seedproxy"] = state.to_json()
        return
    unused = state.unused() or state.unused_files
    if unused and state.fail_unused and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or getattr(config, "workeroutput", None) is not None:
        return
    written = sorted(path for path, seen in state.cassettes.items() if seen.written)
    unused = state.unused()
    if not (written or unused or state.lines or state.drifted or state.unused_files):
        return
    from .run import first_of  # a session ran: run.py is loaded already

    terminalreporter.section("seedproxy")
    for line in sorted(state.lines):
        terminalreporter.line(line)
    if state.drifted:
        fails = " (--seedproxy-drift=fail: they failed)" if state.drift == "fail" else ""
        terminalreporter.line(f"drift in {len(state.drifted)} test(s){fails}:", yellow=True)
        for nodeid, records in sorted(state.drifted.items()):
            terminalreporter.line(f"{nodeid}: {_drift_text(records)}")
    for path in written:
        terminalreporter.line(f"cassette written: {path}")
    never = [f"recording never played: {what}" for what in unused]
    for line in first_of(never, "and {} more recordings never played"):
        terminalreporter.line(line)
    for path in sorted(state.unused_files):
        terminalreporter.line(f"cassette file no test uses: {path}")
    if (unused or state.unused_files) and state.fail_unused:
        terminalreporter.line(
            f"seedproxy: {len(unused)} recording(s) never played, {len(state.unused_files)} "
            "cassette file(s) no test uses (--seedproxy-fail-unused)",
            red=True,
        )
