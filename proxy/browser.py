"""What a web page in the user's browser must not be able to do through the proxy. Pure.

A proxy on 127.0.0.1 is reachable by any page the user opens: by DNS rebinding (a
hostile name that resolves to 127.0.0.1, so the page's own origin reads the answers) and
by cross-site requests (forms, which need no CORS preflight). So, as nginx's
``server_name`` and a CSRF-aware API would: a loopback bind answers only loopback names
in ``Host``; a request naming a foreign ``Origin`` is refused unless listed; and the JSON
endpoints refuse the body types a form can send."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
# What an HTML form can send without a CORS preflight (plus no type at all, which a form
# never sends and command-line clients sometimes do).
FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})


def is_loopback(name: str) -> bool:
    """Whether a host name or address (without a port; IPv6 with or without brackets)
    names this machine's loopback interface."""
    name = name.strip("[]").lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(host: str) -> str:
    """``Host``'s name without its port (``[::1]:8080`` -> ``::1``), lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@functools.lru_cache(maxsize=256)  # asked of every request, with a few names in use
def loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback interface."""
    return is_loopback(host_name(host))


@dataclass(frozen=True, slots=True)
class Guard:
    """The checks for one proxy: ``loopback`` (bound to loopback, so ``Host`` must be a
    loopback name or one of ``hosts``) and the ``origins`` allowed besides the proxy's own."""

    loopback: bool
    hosts: frozenset[str]
    origins: frozenset[str]

    @classmethod
    def of(cls, bind: str, hosts: tuple[str, ...], origins: tuple[str, ...]) -> Guard:
        return cls(
            is_loopback(bind),
            frozenset(h.lower() for h in hosts),
            frozenset(o.rstrip("/").lower() for o in origins),
        )

    def refused_host(self, host: str | None) -> bool:
        """Whether a loopback-bound proxy must refuse a request naming ``host``."""
        if not self.loopback:
            return False
        return not (loopback_host(host or "") or host_name(host or "") in self.hosts)

    def refused_origin(self, origin: str | None, host: str | None) -> bool:
        """Whether a request sent by the page at ``origin`` must be refused: neither the
        proxy's own origin (same ``Host``) nor a listed one. No ``Origin``: not a
        cross-site browser request."""
        if origin is None:
            return False
        origin = origin.strip().rstrip("/").lower()
        if origin in self.origins:
            return False
        parts = urlsplit(origin)
        return parts.scheme not in ("http", "https") or parts.netloc != (host or "").lower()


def form_type(content_type: str | None) -> bool:
    """Whether a body's ``Content-Type`` is one a cross-site form can send."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() in FORM_TYPES
