"""The one URL masker: every URL a person or a log reads (the start-up line, logs, store
errors, ``/healthz``, stats, explain, the CLI) goes through :func:`masked_url`. Pure.

A URL's user name is as secret as its password: ``redis://tok3n@host/0`` carries a token
in the user slot, ``redis://:pw@host`` one in the password slot; both are masked whole. So
is the value of a query parameter that carries a credential (redis-py reads
``?password=``; gateways take ``?api_key=``)."""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote

from .patterns import Match, compile_str

MASK: Final = "***"
_AUTHORITY_ENDS: Final = frozenset("/?#")
# Query parameters whose value is a credential (compared lower-cased, percent-decoded).
CREDENTIAL_PARAMETERS: Final = frozenset(
    (
        *("password", "passwd", "pass", "pwd", "secret", "client_secret"),
        *("token", "access_token", "refresh_token", "id_token", "auth", "authorization"),
        *("api_key", "api-key", "apikey", "key", "sig", "signature", "code"),
    )
)
# One parameter: what starts it, its name, its value up to the next separator (a comma
# or a space may be part of a value: masked with it, even if it ends the URL)
_PARAMETER = compile_str(r"([?&;])([^=&#?;,\s]*)=([^&#;]*)")


def masked_url(text: str) -> str:
    """``text`` (a URL, a list of them such as Redis Cluster nodes, or one without a
    scheme) with the user-info of each URL (``user:password@``, ``user@``, ``:password@``)
    shown as ``***@``.

    The authority is read as URL parsers (urllib, yarl, redis-py) read it: from ``//``, or
    from the text's start, up to the first ``/``, ``?`` or ``#``, its user-info ending at
    the last ``@`` in it. So whatever a client would send as a credential is masked,
    percent-encoded or not, and an ``@`` in a path or query is left alone. Linear in the
    text: authorities never overlap. Then every credential query parameter's value
    (:data:`CREDENTIAL_PARAMETERS`) reads ``***``."""
    out: list[str] = []
    done = 0  # text[:done] is in out
    start = 0  # where the next authority starts
    while start >= 0:
        end = _authority_end(text, start)
        after = text.find("//", end)
        at = text.rfind("@", start, end)
        if at < 0 and _bad_port(text[start:end]):
            # "u:PW5#SECRET@host": a password with an unencoded '/', '?' or '#' ends the
            # authority early, leaving "u:PW5" (no port); its user-info ends at the URL's
            # last '@'
            at = text.rfind("@", end, after if after >= 0 else len(text))
        if at >= 0:
            out += (text[done:start], MASK)
            done = at
        start = after + 2 if after >= 0 else -1
    out.append(text[done:])
    return _PARAMETER.sub(_masked_parameter, "".join(out))


def _masked_parameter(match: Match[str]) -> str:
    start, name, value = match.group(1), match.group(2) or "", match.group(3)
    if value and unquote(name).strip().lower() in CREDENTIAL_PARAMETERS:
        return f"{start}{name}={MASK}"
    return match.group(0) or ""


def _bad_port(authority: str) -> bool:
    """Whether ``authority`` (no ``@`` in it) ends in a port that is no number: what is
    left of ``user:password`` cut short, since a host never holds a ':' outside ``[]``."""
    host, colon, port = authority.rpartition(":")
    return bool(colon) and not host.endswith("]") and not port.isdigit() and "]" not in port


def _authority_end(text: str, start: int) -> int:
    """The index of the first ``/``, ``?`` or ``#`` at or after ``start`` (or the end)."""
    for index in range(start, len(text)):
        if text[index] in _AUTHORITY_ENDS:
            return index
    return len(text)
