"""The pytest plugin: ``@pytest.mark.seedproxy`` gives a test its own cassette, recorded
the first time and replayed offline after that, whatever language or client the code
under test uses to reach the API.

One proxy per pytest process (each xdist worker has its own), started before conftest
files and test modules are imported, so that clients made at import time pick up
``OPENAI_BASE_URL``. It runs in a thread with its own event loop; each test switches the
cassette it serves (and its mode) through that loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
from collections.abc import Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .config import ConfigError, load_settings
from .run import MODES, PLACEHOLDER_KEY, Result, Session

T = TypeVar("T")
MARKER = "seedproxy"
SUFFIX = ".json"
MAX_NAME = 200  # characters of a cassette's file name; longer ones end with a hash
_UNSAFE = re.compile(r"""[\s<>:"'/\\|?*%]""")
_ENV = ("OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_KEY")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("seedproxy", "seedproxy: recorded OpenAI API answers")
    group.addoption(
        "--seedproxy-mode",
        choices=MODES,
        help="once (default: record a missing cassette, replay an existing one strictly), "
        "replay, record, rewrite or refresh.",
    )
    group.addoption(
        "--seedproxy-upstream",
        metavar="URL",
        help="The API to record from (default: the config's upstream.base_url, else OpenAI).",
    )
    group.addoption(
        "--seedproxy-fail-unused",
        action="store_true",
        default=None,
        help="Fail the run when a cassette holds recordings no test played.",
    )
    parser.addini("seedproxy_mode", "seedproxy's default --seedproxy-mode.", default="once")
    parser.addini("seedproxy_upstream", "seedproxy's default --seedproxy-upstream.", default="")
    parser.addini(
        "seedproxy_fail_unused", "seedproxy's --seedproxy-fail-unused.", type="bool", default=False
    )
    parser.addini("seedproxy_config", "A seedproxy TOML config file for the proxy.", default="")


class _Loop:
    """An event loop in a daemon thread; :meth:`run` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="seedproxy", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@dataclass
class _Cassette:
    """What this run did with one cassette file, over every test that used it."""

    loaded: dict[str, str] = field(default_factory=dict)  # key -> description
    played: set[str] = field(default_factory=set)
    written: bool = False


@dataclass
class _State:
    mode: str
    fail_unused: bool
    rootpath: Path
    session: Session | None = None
    loop: _Loop | None = None
    saved_env: dict[str, str | None] = field(default_factory=dict)
    existed: dict[Path, bool] = field(default_factory=dict)  # at its first use in this run
    cassettes: dict[str, _Cassette] = field(default_factory=dict)  # by path, as shown

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self.loop is not None
        return self.loop.run(coro)

    def shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.rootpath))
        except ValueError:
            return str(path)

    def add(self, path: str, result: Result) -> None:
        seen = self.cassettes.setdefault(path, _Cassette())
        seen.loaded.update(result.loaded)
        seen.played |= result.played
        seen.written |= result.written

    def unused(self) -> list[str]:
        return [
            f"{path} {what}"
            for path, seen in sorted(self.cassettes.items())
            for key, what in seen.loaded.items()
            if key not in seen.played
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            path: {"loaded": seen.loaded, "played": sorted(seen.played), "written": seen.written}
            for path, seen in self.cassettes.items()
        }

    def merge(self, data: dict[str, Any]) -> None:
        for path, seen in data.items():
            mine = self.cassettes.setdefault(path, _Cassette())
            mine.loaded.update(seen["loaded"])
            mine.played.update(seen["played"])
            mine.written |= seen["written"]


STATE = pytest.StashKey[_State]()


def _option(config: pytest.Config, name: str) -> Any:
    """A command-line option, also before the command line is fully parsed (when the
    proxy starts, ahead of conftest files)."""
    value = getattr(config.option, name, None)
    return value if value is not None else getattr(config.known_args_namespace, name, None)


def _is_xdist_controller(config: pytest.Config) -> bool:
    """Whether this process only hands tests to xdist workers (which run the proxies)."""
    return bool(_option(config, "numprocesses")) and "PYTEST_XDIST_WORKER" not in os.environ


def _start(config: pytest.Config) -> None:
    """Start this process's proxy and point the OpenAI environment variables at it."""
    if STATE in config.stash:
        return
    mode = _option(config, "seedproxy_mode") or config.getini("seedproxy_mode")
    if mode not in MODES:
        raise pytest.UsageError(f"seedproxy_mode: must be one of {', '.join(MODES)}, got {mode!r}")
    fail_unused = _option(config, "seedproxy_fail_unused")
    state = _State(
        mode,
        bool(config.getini("seedproxy_fail_unused") if fail_unused is None else fail_unused),
        config.rootpath,
    )
    config.stash[STATE] = state
    if _is_xdist_controller(config):
        return
    upstream = _option(config, "seedproxy_upstream") or config.getini("seedproxy_upstream")
    toml = config.getini("seedproxy_config")
    try:
        settings = load_settings(
            config.rootpath / toml if toml else None,
            os.environ,
            {"upstream.base_url": upstream or None},
        )
    except ConfigError as exc:
        raise pytest.UsageError(f"seedproxy: {exc}") from None
    state.loop = _Loop()
    state.session = Session(settings, cassettes=True)
    base_url = state.call(state.session.start())
    state.saved_env = {name: os.environ.get(name) for name in _ENV}
    os.environ["OPENAI_BASE_URL"] = os.environ["OPENAI_API_BASE"] = base_url
    if mode in ("once", "replay") and not os.environ.get("OPENAI_API_KEY"):
        os.environ["OPENAI_API_KEY"] = PLACEHOLDER_KEY  # SDK clients refuse to start without


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    _start(early_config)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "seedproxy(cassette=None): serve the test's OpenAI API calls from a cassette, "
        "<test dir>/cassettes/<module>/<test>.json, or the one named.",
    )
    _start(config)  # when the plugin came late (a conftest's pytest_plugins)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or state.session is None or state.loop is None:
        return
    state.call(state.session.stop())
    state.loop.close()
    for name, value in state.saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def cassette_name(item: pytest.Item, name: str | None) -> str:
    """A file name for the cassette: ``name``, else the test's (its class's too), with
    characters that are unsafe in a file name (parametrized ids have them) replaced."""
    if name is None:
        cls = getattr(item, "cls", None)
        name = (f"{cls.__name__}." if cls is not None else "") + item.name
    name = _UNSAFE.sub("-", name.removesuffix(SUFFIX))
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 17] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return name + SUFFIX


def cassette_path(item: pytest.Item, marker: pytest.Mark) -> Path:
    """``<test file's dir>/cassettes/<module>/<name>.json``."""
    unknown = set(marker.kwargs) - {"cassette"}
    if marker.args or unknown:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.seedproxy takes only cassette=NAME "
            f"(got {', '.join([*map(repr, marker.args), *sorted(unknown)])})"
        )
    return (
        item.path.parent
        / "cassettes"
        / item.path.stem
        / cassette_name(item, marker.kwargs.get("cassette"))
    )


@pytest.fixture(autouse=True)
def _seedproxy_cassette(request: pytest.FixtureRequest) -> Iterator[None]:
    """Serve the test's cassette while it runs (an empty one, in replay, for a test that is
    not marked: nothing reaches the network; in other modes such a test goes live)."""
    state = request.config.stash.get(STATE, None)
    if state is None or state.session is None:
        yield
        return
    session, item = state.session, request.node
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        state.call(session.begin(None, "replay" if state.mode == "replay" else "passthrough"))
        try:
            yield
        finally:
            state.call(session.end())
        return
    path = cassette_path(item, marker)
    first = path not in state.existed
    if first:
        state.existed[path] = path.exists()
    # rewrite empties a cassette once per run: tests sharing it add to it after that
    mode = "record" if state.mode == "rewrite" and not first else state.mode
    state.call(session.begin(path, mode, state.existed[path]))
    try:
        yield
    finally:
        state.add(state.shown(path), state.call(session.end()))


class Recordings:
    """What the ``seedproxy`` fixture gives a test: the proxy's base URL (already in
    ``OPENAI_BASE_URL``), the test's cassette and mode, and its counts so far."""

    def __init__(self, state: _State, cassette: Path | None) -> None:
        assert state.session is not None
        self._state, self._session = state, state.session
        self.base_url = state.session.base_url
        self.cassette = cassette

    def _counts(self) -> Result:
        return self._state.call(self._session.current())

    @property
    def mode(self) -> str:
        """The proxy's cache mode for this test (``once`` becomes record or replay)."""
        return self._counts().mode

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
    state = request.config.stash.get(STATE, None)
    if state is None or state.session is None:
        raise pytest.UsageError("the seedproxy fixture needs the plugin's proxy to be running")
    marker = request.node.get_closest_marker(MARKER)
    return Recordings(state, cassette_path(request.node, marker) if marker else None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A replay miss fails its test, with the reason, even if the test caught the error."""
    report = yield
    state = item.config.stash.get(STATE, None)
    if call.when != "call" or state is None or state.session is None:
        return report
    misses = state.call(state.session.current()).replay_misses
    if misses:
        text = "\n\n".join(misses)
        report.sections.append(("seedproxy replay misses", text))
        if report.passed:
            report.outcome = "failed"
            report.longrepr = (
                f"seedproxy: {len(misses)} request(s) had no recording (the test caught "
                f"the error, the run does not):\n{text}"
            )
    return report


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist: a worker's cassettes, for the summary."""
    state = node.config.stash.get(STATE, None)
    output = getattr(node, "workeroutput", {}).get("seedproxy")
    if state is not None and output is not None:
        state.merge(output)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE, None)
    if state is None:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller sums up
        workeroutput["seedproxy"] = state.to_json()
    elif state.fail_unused and state.unused() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or getattr(config, "workeroutput", None) is not None:
        return
    written = sorted(path for path, seen in state.cassettes.items() if seen.written)
    unused = state.unused()
    if not (written or unused):
        return
    terminalreporter.section("seedproxy")
    for path in written:
        terminalreporter.line(f"cassette written: {path}")
    for what in unused:
        terminalreporter.line(f"recording never played: {what}")
    if unused and state.fail_unused:
        terminalreporter.line(
            f"seedproxy: {len(unused)} recording(s) never played (--seedproxy-fail-unused)",
            red=True,
        )
