"""Frozen settings: TOML file < ``SEEDPROXY_*`` environment < CLI flags, with one-line errors."""

from __future__ import annotations

import difflib
import functools
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from .keys import Keyer, KeyRules, Rewrite, parse_path
from .patterns import compile_bytes
from .redact import Redactor
from .urls import masked_url

ENV_PREFIX = "SEEDPROXY_"


class ConfigError(ValueError):
    """A bad setting; the message names the key and the problem on one line."""


class FieldError(ValueError):
    """A section's own check of one field failed; :func:`load_settings` turns it into a
    ConfigError naming where the user set that field (variable, flag or file key)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def did_you_mean(word: str, choices: Iterable[str], shown: Callable[[str], str] = str) -> str:
    """``"; did you mean X?"`` when ``word`` is a close misspelling of one of ``choices``
    (X as ``shown``: the name the user would type), else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {shown(close[0])}?" if close else ""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``"90"``, ``"30m"``, ``"1h"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '30m' or '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if not m:
            raise ValueError(f"expected a duration such as 30, '30m' or '1h', got {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as ``"32MB"`` or ``"1GiB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1048576 or '32MB'")
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _SIZES | {"": 1}:
            raise ValueError(f"expected a size such as 1048576 or '32MB', got {value!r}")
        size = int(float(m.group(1)) * _SIZES.get(m.group(2).lower(), 1))
    if size <= 0:
        raise ValueError("must be positive")
    return size


def parse_rewrites(value: Any) -> tuple[Rewrite, ...]:
    """``[[cache.normalize]]`` tables as checked rules, in order."""
    if isinstance(value, str):
        raise ValueError("[[cache.normalize]] tables can only be set in the config file")
    if not isinstance(value, list):
        raise ValueError("expected [[cache.normalize]] tables")
    rules = []
    for n, table in enumerate(value, 1):
        try:
            rules.append(Rewrite.parse(table))
        except ValueError as exc:  # "cache.normalize[1].pattern: ..." once the key is named
            raise ValueError(f"[{n}]{'' if str(exc).startswith('.') else ': '}{exc}") from None
    return tuple(rules)


def _duration(default: float) -> Any:
    return field(default=default, metadata={"parse": parse_duration})


def _size(default: int) -> Any:
    return field(default=default, metadata={"parse": parse_size})


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body: int = _size(32 * 1024**2)
    body_timeout: float = _duration(30.0)
    header_timeout: float = _duration(75.0)
    write_timeout: float = _duration(60.0)  # a client that reads nothing that long is cut
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides loopback ones
    cors_origins: tuple[str, ...] = ()  # browser origins allowed besides the proxy's own

    def __post_init__(self) -> None:
        for name in ("body_timeout", "header_timeout", "write_timeout"):
            if getattr(self, name) <= 0:
                raise FieldError(name, "must be positive")
        if not 0 <= self.port <= 65535:
            raise FieldError("port", "must be between 0 and 65535")
        if self.workers < 1:
            raise FieldError("workers", "must be at least 1")


@dataclass(frozen=True)
class UpstreamSettings:
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    api_key_header: Literal["authorization", "api-key"] = "authorization"
    timeout: float = _duration(600.0)
    connect_timeout: float = _duration(10.0)
    max_response: int = _size(64 * 1024**2)

    def __post_init__(self) -> None:
        if not re.match(r"https?://[^/\s]+", self.base_url):
            shown = masked_url(self.base_url)
            raise FieldError("base_url", f"must be an http(s) URL, got {shown!r}")


@dataclass(frozen=True)
class CacheSettings:
    backend: Literal["disk", "redis"] = "disk"
    dir: str = "./.seedproxy"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False
    mode: Literal["record", "replay", "refresh", "passthrough"] = "record"
    fingerprint: Literal["current", "latest", "any"] = "current"
    fingerprint_window: float = _duration(3600.0)
    ignore_fields: tuple[str, ...] = ("stream", "stream_options", "user", "metadata", "store")
    ignore_paths: tuple[str, ...] = ()
    normalize: tuple[Rewrite, ...] = field(default=(), metadata={"parse": parse_rewrites})
    repeat: Literal["same", "sequence"] = "same"
    scope: Literal["shared", "per-key"] = "shared"
    verify_rate: float = 0.0
    verify_replace: bool = False
    verify_concurrency: int = 4
    ttl: float = _duration(0.0)
    size_limit: int = _size(4 * 1024**3)
    complete_on_disconnect: bool = True
    embedding_tolerance: float = 0.0
    redis_entry_ttl: float = _duration(0.0)
    redis_maxmemory: int = field(
        default=0, metadata={"parse": lambda v: parse_size(v) if v not in (0, "0") else 0}
    )
    lock_ttl: float = _duration(30.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.verify_rate <= 1.0:
            raise FieldError("verify_rate", "must be between 0 and 1")
        if self.verify_concurrency < 1:
            raise FieldError("verify_concurrency", "must be at least 1")
        if self.embedding_tolerance < 0:
            raise FieldError("embedding_tolerance", "must not be negative")
        for path in self.ignore_paths:
            try:
                parse_path(path)
            except ValueError as exc:
                raise FieldError("ignore_paths", str(exc)) from None
        _check_redis_url(self.redis_url)


def _check_redis_url(url: str) -> None:
    """One line (the URL masked) for a Redis URL redis-py could not read, rather than its
    traceback when the store opens."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed on access: a port that is no number raises
    except ValueError as exc:  # its text may quote the URL (a piece of a password): not shown
        why = (
            "its port is no number from 0 to 65535 (percent-encode a '/', '?' or '#' in a password)"
            if "port" in str(exc).lower()
            else "its host is malformed"
        )
        raise FieldError("redis_url", f"{masked_url(url)!r} is not a URL: {why}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise FieldError(
            "redis_url", f"must be a redis://, rediss:// or unix:// URL, got {masked_url(url)!r}"
        )


@dataclass(frozen=True)
class RedactSettings:
    builtin: bool = True
    patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for pattern in self.patterns:
            try:
                compile_bytes(pattern.encode())
            except ValueError as exc:
                raise FieldError("patterns", f"{pattern!r} is {exc}") from None


def parse_auto(value: Any) -> bool | None:
    """``true``, ``false``, or ``"auto"`` (None): what other settings imply."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        return _bool(value, from_text=True)
    except ValueError:
        raise ValueError(f'expected true, false or "auto", got {value!r}') from None


@dataclass(frozen=True)
class SeedSettings:
    mode: Literal["force", "override", "require", "passthrough"] = "force"
    default: int = 12345
    # honour X-Seedproxy-Seed-Mode; None ("auto"): yes without proxy tokens, no with them
    # (Settings.client_seed_mode)
    allow_client_mode: bool | None = field(default=None, metadata={"parse": parse_auto})

    def __post_init__(self) -> None:
        if not -(2**63) <= self.default < 2**63:
            raise FieldError("default", "must fit in a signed 64-bit integer")


_EMPTY_TOKEN = "an empty token would let in requests that send no token; remove it"


def parse_tokens(value: Any) -> tuple[str, ...]:
    """Proxy tokens: a list, or comma-separated text from the environment or a flag. An
    empty one is refused, never dropped: ``SEEDPROXY_AUTH_TOKENS=","`` must not turn
    authentication off without a word."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    if any(not v.strip() for v in value):
        raise ValueError(_EMPTY_TOKEN)
    return tuple(value)


@dataclass(frozen=True)
class AuthSettings:
    tokens: tuple[str, ...] = field(default=(), metadata={"parse": parse_tokens})
    tokens_file: str = ""


@dataclass(frozen=True)
class LogSettings:
    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    upstream: UpstreamSettings
    cache: CacheSettings
    seed: SeedSettings
    auth: AuthSettings
    log: LogSettings
    redact: RedactSettings = field(default_factory=RedactSettings)
    # USD per million (prompt, completion) tokens, by model: [prices] "gpt-4o" = [2.5, 10.0]
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @functools.cached_property
    def rules(self) -> KeyRules:
        """What shapes a body before it is hashed, compiled once."""
        cache = self.cache
        return KeyRules(
            cache.ignore_fields,
            tuple(parse_path(p) for p in cache.ignore_paths),
            cache.normalize,
            self.redactor,
        )

    @functools.cached_property
    def keyer(self) -> Keyer:
        """The one key function, with every setting that changes a key."""
        return Keyer(
            self.rules,
            self.upstream.base_url,
            self.seed.mode,
            self.seed.default,
            self.cache.repeat == "sequence",
        )

    @functools.cached_property
    def redactor(self) -> Redactor:
        """The detectors and patterns applied to everything written."""
        return Redactor(self.redact.builtin, self.redact.patterns)

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache.dir).expanduser()

    @property
    def client_seed_mode(self) -> bool:
        """Whether a request may choose its own seed policy (``X-Seedproxy-Seed-Mode``):
        ``seed.allow_client_mode`` if set, else only without proxy tokens, as a proxy with
        tokens serves clients that must not step past the operator's policy."""
        allowed = self.seed.allow_client_mode
        if allowed is not None:
            return allowed
        return not (self.auth.tokens or self.auth.tokens_file)

    def proxy_tokens(self) -> tuple[str, ...]:
        """Tokens from ``auth.tokens`` plus the non-blank lines of ``auth.tokens_file``; a
        file with no token at all is a mistake, not "no authentication"."""
        tokens = list(self.auth.tokens)
        if self.auth.tokens_file:
            text = Path(self.auth.tokens_file).expanduser().read_text()
            found = [t.strip() for t in text.splitlines() if t.strip() and not t.startswith("#")]
            if not found:
                raise ConfigError(f"auth.tokens_file: {self.auth.tokens_file} holds no token")
            tokens += found
        return tuple(tokens)


SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "upstream": UpstreamSettings,
    "cache": CacheSettings,
    "seed": SeedSettings,
    "auth": AuthSettings,
    "log": LogSettings,
    "redact": RedactSettings,
}


def _choice(choices: tuple[str, ...], value: Any) -> Any:
    if value not in choices:
        hint_text = did_you_mean(str(value), choices)
        raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}{hint_text}")
    return value


def _strings(value: Any, from_text: bool) -> tuple[str, ...]:
    if from_text and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def _bool(value: Any, from_text: bool) -> bool:
    if from_text and isinstance(value, str):
        low = value.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off"}:
            return False
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _int(value: Any, from_text: bool) -> int:
    if from_text and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _float(value: Any, from_text: bool) -> float:
    if from_text and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _str(value: Any, from_text: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


_SCALARS: dict[Any, Callable[[Any, bool], Any]] = {
    bool: _bool,
    int: _int,
    float: _float,
    str: _str,
}


def _coerce(hint: Any, parser: Callable[[Any], Any] | None, value: Any, from_text: bool) -> Any:
    """Check ``value`` against the field's type; text from env/flags is converted first."""
    if parser is not None:
        return parser(value)
    origin = typing.get_origin(hint)
    if origin is Literal:
        return _choice(typing.get_args(hint), value)
    if origin is tuple:
        return _strings(value, from_text)
    if hint in _SCALARS:
        return _SCALARS[hint](value, from_text)
    raise TypeError(f"unsupported setting type {hint!r}")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class _Given:
    """One value as the user gave it, with the name they gave it under (an environment
    variable, a flag or a file's ``section.key``), so an error can name that."""

    value: Any
    source: str
    from_text: bool  # text from the environment or a flag, converted before checking


_Layer = dict[str, dict[str, _Given]]


def _checked(section: str, given: Mapping[str, _Given]) -> dict[str, Any]:
    """The section's values converted and checked against its field types."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, g in given.items():
        parser = known[key].metadata.get("parse")
        try:
            out[key] = _coerce(hints[key], parser, g.value, g.from_text)
        except ValueError as exc:  # a table in an array names itself: "[2].pattern: ..."
            where = "" if str(exc).startswith("[") else ": "
            raise ConfigError(f"{g.source}{where}{exc}") from None
    return out


def _keys(section: str) -> list[str]:
    return [f.name for f in fields(SECTIONS[section])]


def _env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def _unknown_key(source: str, section: str, key: str, in_env: bool) -> ConfigError:
    """``source`` names a key ``section`` does not have: the close one (spelled as the user
    would set it), or all of them."""
    return ConfigError(
        f"{source}: unknown key"
        + (
            did_you_mean(
                key,
                _keys(section),
                lambda k: _env_name(section, k) if in_env else f"{section}.{k}",
            )
            or f" (the [{section}] keys: {', '.join(_keys(section))})"
        )
    )


def _env_layer(env: Mapping[str, str]) -> _Layer:
    """``SEEDPROXY_<SECTION>_<KEY>`` variables of a known section. Any other ``SEEDPROXY_*``
    variable is someone else's (Kubernetes service links such as ``SEEDPROXY_PORT`` and
    ``SEEDPROXY_SERVICE_HOST`` for a Service named seedproxy, a wrapper's own) and ignored;
    a key a known section does not have is a typo, and stops the proxy."""
    layer: _Layer = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        section, underscore, key = var[len(ENV_PREFIX) :].lower().partition("_")
        if not underscore or (section not in SECTIONS and section != "prices"):
            continue
        if section == "prices":
            raise ConfigError(f"{var}: [prices] can only be set in the config file")
        if key not in _keys(section):
            raise _unknown_key(var, section, key, in_env=True)
        layer.setdefault(section, {})[key] = _Given(value, var, True)
    return layer


def _file_layer(path: Path, source: str) -> tuple[_Layer, dict[str, Any]]:
    """The TOML file's sections, and its raw ``[prices]`` table."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {path} is not valid TOML: {exc}") from None
    layer: _Layer = {}
    for section, values in data.items():
        if section == "prices":
            continue
        if section not in SECTIONS:
            raise ConfigError(
                f"{section}: unknown section"
                + (
                    did_you_mean(section, [*SECTIONS, "prices"])
                    or f" (known: {', '.join(SECTIONS)}, prices)"
                )
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a table like [{section}]")
        for key, value in values.items():
            name = f"{section}.{key}"
            if key not in _keys(section):
                raise _unknown_key(name, section, key, in_env=False)
            layer.setdefault(section, {})[key] = _Given(value, name, False)
    return layer, data.get("prices", {})


def _prices(raw: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    prices = {}
    for model, pair in raw.items():
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in pair
            )
        ):
            raise ConfigError(
                f"prices.{model}: expected [prompt, completion] USD per million "
                f"tokens, got {pair!r}"
            )
        prices[model] = (float(pair[0]), float(pair[1]))
    return prices


def load_settings(
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults < TOML ``config`` < ``env`` < ``flags`` (``{"section.key": value}``).
    ``flag_names`` (``{"cache.mode": "--mode"}``) lets an error name the flag the user typed."""
    env = os.environ if env is None else env
    config_source = "--config" if config else ENV_PREFIX + "CONFIG"
    config = config or env.get(ENV_PREFIX + "CONFIG")
    layers: list[_Layer] = []
    prices: dict[str, tuple[float, float]] = {}
    if config:
        file_layer, raw_prices = _file_layer(Path(config), config_source)
        layers.append(file_layer)
        prices = _prices(raw_prices)
    layers.append(_env_layer(env))
    flag_layer: _Layer = {}
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, _, key = dotted.partition(".")
            source = (flag_names or {}).get(dotted, dotted)
            flag_layer.setdefault(section, {})[key] = _Given(value, source, True)
    layers.append(flag_layer)
    given: _Layer = {s: {} for s in SECTIONS}
    for layer in layers:
        for section, values in layer.items():
            given[section].update(values)
    built = {}
    for section, cls in SECTIONS.items():
        try:
            built[section] = cls(**_checked(section, given[section]))
        except FieldError as exc:
            g = given[section].get(exc.key)
            raise ConfigError(
                f"{g.source if g else section + '.' + exc.key}: {exc.problem}"
            ) from None
    return Settings(**built, prices=prices)


def upstream_credential(
    settings: Settings, env: Mapping[str, str], tokens: tuple[str, ...]
) -> tuple[str, str] | None:
    """With proxy ``tokens``, the (header, value) the proxy sends upstream instead of the
    client's; None without tokens (the client's own credential is forwarded)."""
    if not tokens:
        return None
    key = env.get(settings.upstream.api_key_env, "")
    if not key:
        raise ConfigError(
            f"upstream.api_key_env: ${settings.upstream.api_key_env} is not set; "
            "with auth.tokens the proxy sends its own key upstream"
        )
    if settings.upstream.api_key_header == "api-key":
        return "api-key", key
    return "Authorization", f"Bearer {key}"


def cannot_listen(server: ServerSettings, exc: OSError) -> ConfigError:
    """The one line for an address the proxy cannot listen on, the same whichever process
    found out (the supervisor's check, a worker, a single process)."""
    errno = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else None
    reason = os.strerror(errno) if errno else exc.strerror or str(exc)
    return ConfigError(
        f"server: cannot listen on {server.host}:{server.port}: {reason[:1].lower()}{reason[1:]}"
    )


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


def with_overrides(settings: Settings, **sections: Mapping[str, Any]) -> Settings:
    """A copy of ``settings`` with some section fields replaced (for tests and tools)."""
    updated = {
        name: replace(getattr(settings, name), **values) for name, values in sections.items()
    }
    return replace(settings, **updated)
