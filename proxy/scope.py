"""Whose a request is: the client's credential as the credential itself, not as it was
spelled, and the hash of it that names a ``per-key`` cache scope, a group of coalesced
misses and the owner of drift events. Pure.

A header's bytes are taken as sent (aiohttp hands on what is not UTF-8 as surrogates,
which encode back to the same bytes): two credentials that differ in any byte are two
scopes, and one that is not UTF-8 is a credential like any other, never an error."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Final

BEARER: Final = b"bearer"
BASIC: Final = b"basic"


def header_bytes(headers: Mapping[str, str], name: str) -> bytes:
    """A request header's value as the client sent its bytes (``b""`` when absent)."""
    return headers.get(name, "").encode("utf-8", "surrogateescape")


def authorization(headers: Mapping[str, str]) -> tuple[bytes, bytes]:
    """The ``Authorization`` header as (scheme in lower case, credential): a Bearer token,
    or the password of Basic credentials (how a browser sends a proxy token to the admin
    pages: any user name, the token as password); spacing around either is not part of
    it. ``(b"", b"")`` when there is none."""
    parts = header_bytes(headers, "Authorization").split(None, 1)
    if not parts:
        return b"", b""
    scheme, given = parts[0].lower(), parts[1].strip() if len(parts) > 1 else b""
    return scheme, basic_password(given) if scheme == BASIC else given


def basic_password(credentials: bytes) -> bytes:
    """The password of HTTP Basic credentials: the token, as the admin pages take it. A user
    name alone (a gateway's key in the user slot), or what is not base64, is a credential
    of its own, marked so it is never a token, and never "no credential": it must not share
    a per-key scope with anonymous clients or with another user name."""
    try:
        user, _, password = base64.b64decode(credentials, validate=True).partition(b":")
    except binascii.Error:
        return b"basic " + credentials
    return password or (b"basic-user " + user if user else b"")


def credential(headers: Mapping[str, str]) -> bytes:
    """The client's credential, whatever its spelling: ``Authorization: Bearer tok``,
    ``bearer  tok``, Basic credentials with ``tok`` as password and ``api-key: tok`` are
    all ``tok``. Another scheme keeps its (lower-cased) name, so ``Token tok`` is not
    ``tok``. ``b""`` when the request sends none."""
    scheme, given = authorization(headers)
    if not scheme:
        return header_bytes(headers, "api-key").strip()
    return given if scheme in (BEARER, BASIC) else scheme + b" " + given


def credential_scope(headers: Mapping[str, str]) -> str:
    """A hash of the client's credential (:func:`credential`), hashed as SDKs spell it
    (``Bearer <token>``) so that scopes made before spellings were merged keep their
    entries and events."""
    given = credential(headers)
    return hashlib.sha256(b"Bearer " + given if given else b"").hexdigest()[:32]


def event_owner(headers: Mapping[str, str], scope: str) -> str | None:
    """In per-key scope (``cache.scope``), the credential scope whose drift events these
    headers' sender makes and may see; in a shared scope, None: everyone's."""
    return credential_scope(headers) if scope == "per-key" else None
