"""The startup check of the disk cache directory, for the commands that open the store."""

from __future__ import annotations

from .schema import ConfigError, Settings


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
