"""Qwen accounts: each ``Identity`` with its credentials and its own HTTP session.

An account is a browser cookie (its ``token`` pair is the session JWT, its
``refresh_token`` pair the auth host's renewal credential), a bare token, or an
email and password the proxy signs in with (only the password's SHA-256, which
is what the site takes, is kept). Each identity owns its own ``requests.Session``
so accounts never share cookies, and speaks through its own proxy when it has
one (``identity_pool.sessions``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
from typing import Any

from identity_pool.credentials import proxy_host
from identity_pool.sessions import SiteSession, new_session


def mask(secret: str, keep: int = 6) -> str:
    """A short prefix that identifies a secret in logs and ``/health`` without revealing it."""
    return f"{secret[:keep]}…" if secret else ""


def jwt_claims(token: str) -> dict[str, Any]:
    """The JWT payload, read without checking the signature (we only need ``id`` and ``exp``)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def parse_cookie(cookie: str) -> dict[str, str]:
    """``name=value; name2=value2`` → dict, keeping order (the site reads ``token``)."""
    pairs = (part.strip().split("=", 1) for part in cookie.split(";"))
    return {p[0].strip(): p[1].strip() for p in pairs if len(p) == 2 and p[0].strip()}


class Identity:
    """One Qwen account: its token, its browser cookie and its own HTTP session."""

    def __init__(
        self, *, token: str = "", cookie: str = "", pool_size: int = 10, label: str = "", ephemeral: bool = False,
        email: str = "", password: str = "", proxy: str = "",
    ) -> None:
        self.cookies = parse_cookie(cookie)
        #: A caller's own credentials (client mode): not in the pool; whoever uses it last closes it.
        self.ephemeral = ephemeral
        self.token = token or self.cookies.get("token", "")
        self.source = "password" if email else "cookie" if cookie else "token"
        self.label = label
        self.email = email
        #: What the site's sign-in takes (§2.4): the lowercase hex SHA-256; the password itself is not kept.
        self.password_sha256 = hashlib.sha256(password.encode()).hexdigest() if email else ""
        #: ``http://[user:pass@]host:port``: every call of this account goes through it (a secret too).
        self.proxy = proxy
        #: Stable name of the configured credential: the token store's key across restarts. A password
        #: account is named by its email alone, so no digest of the password is ever stored.
        self.key = hashlib.sha256((f"email:{email.lower()}" if email else cookie or token).encode()).hexdigest()[:16]
        #: When we obtained the current token (None: it came from the configuration).
        self.obtained_at: float | None = None
        self._pool_size = pool_size
        self._session: SiteSession | None = None
        self._lock = threading.Lock()
        #: Held while renewing, so a burst of refusals renews once.
        self.renewing = threading.Lock()

    @property
    def session(self) -> SiteSession:
        with self._lock:
            if self._session is None:
                self._session = new_session(self._pool_size, self.proxy)
            return self._session

    def cookie_header(self, url: str | None = None) -> str:
        """The browser cookie jar with the current token; the site authenticates writes on it (§1.2).

        With ``url``, cookies the site has set on this account's session since
        (its WAF's ``acw_tc`` and the like) are sent too, replacing a configured
        value of the same name, as a browser's jar would: the site gates writes on
        the whole jar, not ``token=`` alone (§14). The account's token always wins.
        """
        cookies = dict(self.cookies)
        if url is not None and self._session is not None:
            cookies.update(parse_cookie(self._session.jar_header(url)))
        if self.token:
            cookies["token"] = self.token
        return "; ".join(f"{k}={v}" for k, v in cookies.items())

    @property
    def refresh_token(self) -> str:
        return self.cookies.get("refresh_token", "")

    @property
    def proxies(self) -> dict[str, str] | None:
        """This account's proxy as ``requests`` takes it, for calls made outside its own session."""
        return {"http": self.proxy, "https": self.proxy} if self.proxy else None

    @property
    def renewable(self) -> bool:
        """A bare token cannot be renewed; a cookie can (session or refresh token), a password signs in again."""
        return self.source in ("cookie", "password")

    def set_token(self, token: str, refresh_token: str | None = None, now: float | None = None) -> None:
        self.token = token
        self.obtained_at = time.time() if now is None else now
        if refresh_token:
            self.cookies["refresh_token"] = refresh_token

    @property
    def account_id(self) -> str:
        return str(jwt_claims(self.token).get("id", "")) if self.token else ""

    @property
    def expires_at(self) -> int | None:
        exp = jwt_claims(self.token).get("exp") if self.token else None
        return int(exp) if isinstance(exp, (int, float)) else None

    def describe(self, now: float | None = None) -> dict[str, Any]:
        """Masked facts for ``/health``: never the token or cookie themselves."""
        now = time.time() if now is None else now
        expires = self.expires_at
        return {
            "account": self.label,
            "id": mask(self.account_id) or None,
            "source": self.source,
            "has_token": bool(self.token),
            "renewal": "refresh_token" if self.refresh_token else "sign_in" if self.email
            else "session" if self.renewable else "none",
            "proxy": proxy_host(self.proxy),
            "token_expires_at": expires,
            "token_valid_for_s": None if expires is None else max(0, int(expires - now)),
        }

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None
