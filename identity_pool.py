"""Qwen accounts: one ``Identity`` per account, and the ``IdentityPool`` that hands them out.

An account is a browser cookie (its ``token`` pair is the session JWT) or a
bare token. Each identity owns its own ``requests.Session`` so accounts never
share cookies. The pool owns all mutable account state behind one lock.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

from errors import ServiceUnavailable

logger = logging.getLogger(__name__)


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

    def __init__(self, *, token: str = "", cookie: str = "", pool_size: int = 10, label: str = "") -> None:
        self.cookies = parse_cookie(cookie)
        self.token = token or self.cookies.get("token", "")
        self.source = "cookie" if cookie else "token"
        self.label = label
        self._pool_size = pool_size
        self._session: requests.Session | None = None
        self._lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        with self._lock:
            if self._session is None:
                from qwen_client import new_session  # the client module owns HTTP setup

                self._session = new_session(self._pool_size)
            return self._session

    def cookie_header(self) -> str:
        """The browser cookie with the current token; the site authenticates writes on it (§1.2)."""
        cookies = dict(self.cookies)
        if self.token:
            cookies["token"] = self.token
        return "; ".join(f"{k}={v}" for k, v in cookies.items())

    def set_token(self, token: str) -> None:
        self.token = token

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
            "id": mask(self.account_id) or self.label,
            "source": self.source,
            "has_token": bool(self.token),
            "token_expires_at": expires,
            "token_valid_for_s": None if expires is None else max(0, int(expires - now)),
        }

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None


class IdentityPool:
    """Round-robin over the configured accounts.

    ``acquire`` hands out the next account and makes sure it has a token;
    ``release`` gives it back with the outcome, which is where health and
    cool-downs will be recorded.
    """

    def __init__(self, identities: Iterable[Identity], token_fetcher: Callable[[Identity], dict] | None = None) -> None:
        self.identities = list(identities)
        self._fetch_token = token_fetcher
        self._cycle = itertools.cycle(range(len(self.identities))) if self.identities else None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any, token_fetcher: Callable[[Identity], dict] | None = None) -> IdentityPool:
        size = settings.UPSTREAM_POOL_SIZE
        identities = [Identity(cookie=c, pool_size=size) for c in settings.COOKIE]
        identities += [Identity(token=t, pool_size=size) for t in settings.QWEN_TOKEN]
        for n, identity in enumerate(identities, 1):
            identity.label = f"account-{n}"
        return cls(identities, token_fetcher)

    def __len__(self) -> int:
        return len(self.identities)

    def acquire(self) -> Identity:
        """The next account, with a token fetched from its cookie if it has none yet."""
        if self._cycle is None:
            raise ServiceUnavailable(
                "No Qwen account is configured. Put a chat.qwen.ai browser cookie in cookie.txt "
                "(or set COOKIE or QWEN_TOKEN) and restart; see the README.",
                code="no_account",
                retryable=False,
            )
        with self._lock:
            identity = self.identities[next(self._cycle)]
        if not identity.token:
            self.ensure_token(identity)
        return identity

    def ensure_token(self, identity: Identity) -> None:
        """Exchange a cookie without a ``token`` pair for a token (§2.3)."""
        if identity.token or self._fetch_token is None:
            return
        profile = self._fetch_token(identity)
        identity.set_token(profile.get("token") or profile.get("access_token") or "")
        logger.info("%s: obtained a token from its cookie", identity.label)

    def release(self, identity: Identity, error: Exception | None = None) -> None:
        """Give an account back with the outcome of its turn."""
        if error is not None:
            logger.info("%s: turn failed: %s", identity.label, type(error).__name__)

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        return {"total": len(self.identities), "accounts": [i.describe(now) for i in self.identities]}

    def close(self) -> None:
        for identity in self.identities:
            identity.close()
