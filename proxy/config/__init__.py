"""Frozen settings: TOML file < ``SEEDPROXY_*`` environment < CLI flags, with one-line errors.

The schema (``schema``) is apart from the loader (``loader``) and from the parsers of the
values a user writes (``values``); importers use the names re-exported here."""

from .loader import ENV_PREFIX, load_settings
from .schema import (
    SECTIONS,
    AuthSettings,
    CacheSettings,
    ConfigError,
    FieldError,
    LogSettings,
    RedactSettings,
    SeedSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
    with_overrides,
)
from .values import did_you_mean, parse_duration, parse_size

__all__ = [
    "ENV_PREFIX",
    "SECTIONS",
    "AuthSettings",
    "CacheSettings",
    "ConfigError",
    "FieldError",
    "LogSettings",
    "RedactSettings",
    "SeedSettings",
    "ServerSettings",
    "Settings",
    "UpstreamSettings",
    "did_you_mean",
    "load_settings",
    "parse_duration",
    "parse_size",
    "with_overrides",
]
