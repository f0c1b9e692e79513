"""Runtime checks on loaded settings, for the processes that start the proxy."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .schema import ConfigError, ServerSettings, Settings


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
