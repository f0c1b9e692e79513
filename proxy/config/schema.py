"""The frozen settings schema: one dataclass per section, each checking its own fields."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ..keys import Keyer, KeyRules, Rewrite, parse_path
from ..patterns import compile_bytes
from ..redact import Redactor
from ..runmodes import CacheMode
from ..urls import masked_url
from .values import parse_auto, parse_duration, parse_rewrites, parse_size, parse_tokens


class ConfigError(ValueError):
    """A bad setting; the message names the key and the problem on one line."""


class FieldError(ValueError):
    """A section's own check of one field failed; :func:`load_settings` turns it into a
    ConfigError naming where the user set that field (variable, flag or file key)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


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
    mode: CacheMode = CacheMode.RECORD
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


def with_overrides(settings: Settings, **sections: Mapping[str, Any]) -> Settings:
    """A copy of ``settings`` with some section fields replaced (for tests and tools)."""
    updated = {
        name: replace(getattr(settings, name), **values) for name, values in sections.items()
    }
    return replace(settings, **updated)
