"""What one account line says: a browser cookie, a bare token or ``email:password``, and its own proxy.

Lines come from ``cookie.txt``, ``COOKIE`` and the admin API alike:

- ``token=eyJ…; ssxmod_itna=…``: a browser cookie (it has ``name=value`` pairs);
- ``eyJ…``: a bare session token (a JWT: no ``=`` pairs, two dots);
- ``someone@example.com:password``: an email and its password, signed in by the proxy (§2.4);
- any of them followed by `` proxy=<url>`` (``http://``, ``https://``, ``socks5://`` or
  ``socks5h://`` (names resolved by the proxy), with or without ``user:pass@``): every call
  of that account goes through that proxy.

Parsing never echoes the line: a malformed one is reported by what is wrong with it only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from urllib.parse import urlsplit

#: ``email:password``: an address without the cookie's ``=``/``;`` before the first colon. Each part is one
#: unambiguous run (dots only between the domain's labels), so a hostile line is scanned in linear time.
_EMAIL_PASSWORD = re.compile(r"([^\s:;=@]+@[^\s:;=@.]+(?:\.[^\s:;=@.]+)+):(.+)", re.DOTALL)
_JWT = re.compile(r"[\w-]+\.[\w-]+\.[\w-]*")
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


class CredentialError(ValueError):
    """An account line that cannot be used; the message never contains the line's secrets."""


@dataclasses.dataclass(frozen=True)
class AccountSpec:
    """One account as configured: what it signs in with and the proxy it speaks through."""

    kind: str  # cookie | token | password
    secret: str = ""  # the cookie or the token
    email: str = ""
    password: str = dataclasses.field(default="", repr=False)
    proxy: str = ""


def check_proxy(url: str) -> str:
    """A proxy URL as requests takes it, or ``CredentialError`` naming what is wrong (never the URL)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in PROXY_SCHEMES or not parts.hostname:
        raise CredentialError("a proxy must be a URL like http://host:port, http://user:pass@host:port or "
                              "socks5://host:port")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise CredentialError("the proxy's port is not a number") from None
    return url


def parse_account(line: str, proxy: str = "") -> AccountSpec:
    """One account line (``proxy`` given apart, as the admin API does, or at the line's end)."""
    line = line.strip()
    head, _, tail = line.rpartition(" proxy=")  # a trailing " proxy=<url>" (no regex: lines may be hostile)
    if head and not any(c.isspace() for c in tail):
        if proxy:
            raise CredentialError("the proxy is given twice")
        line, proxy = head.strip(), tail
    proxy = check_proxy(proxy.strip()) if proxy.strip() else ""
    if not line:
        raise CredentialError("an account needs a cookie, a token or email:password")
    if any(ord(c) < 32 for c in line):
        raise CredentialError("an account line must not contain control characters")
    pair = _EMAIL_PASSWORD.fullmatch(line)
    if pair:
        return AccountSpec("password", email=pair.group(1), password=pair.group(2), proxy=proxy)
    if "=" not in line and _JWT.fullmatch(line):
        return AccountSpec("token", secret=line, proxy=proxy)
    if "=" not in line:
        raise CredentialError("not a cookie (name=value pairs), a token (a JWT) or email:password")
    return AccountSpec("cookie", secret=line, proxy=proxy)


def proxy_host(url: str) -> str | None:
    """What ``/health`` may show of a proxy: its host and port, never its credentials."""
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname


def secrets_of(line: str) -> list[str]:
    """What a log line must never show of an account line: its password (and digest), its proxy's credentials."""
    try:
        spec = parse_account(line)
    except CredentialError:
        return []
    found = [spec.password, hashlib.sha256(spec.password.encode()).hexdigest()] if spec.password else []
    if spec.proxy:
        parts = urlsplit(spec.proxy)
        found += [p for p in (parts.password, parts.username and parts.password and
                              f"{parts.username}:{parts.password}") if p]
    return found
