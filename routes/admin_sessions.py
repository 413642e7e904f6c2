"""The admin page's sessions, CSRF tokens and sign-in throttle, kept in the shared state store.

A session is a random token in an HttpOnly, SameSite=Strict cookie; the store keeps
only its SHA-256 (with the session's CSRF token), so every worker and host knows it and
logging out deletes it everywhere. Wrong keys are counted per client address: after
``LOGIN_ATTEMPTS`` in ``LOGIN_WINDOW`` seconds that address waits out the window.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from identity_pool import StateStore

COOKIE = "qwen2openai_admin"
#: A session lasts this long after sign-in (seconds), then the page asks for the key again.
SESSION_TTL = 8 * 3600
LOGIN_ATTEMPTS = 5
LOGIN_WINDOW = 300


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class AdminSessions:
    """Sign-in, session lookup, CSRF check and sign-out, over the shared store."""

    def __init__(self, store: StateStore, admin_key: str) -> None:
        self._store, self._key = store, admin_key.encode()

    def key_matches(self, given: str) -> bool:
        """The admin key, compared in constant time."""
        return hmac.compare_digest(given.encode("utf-8", "replace"), self._key)

    def throttled(self, client: str) -> bool:
        """Too many wrong keys from this address lately."""
        return int(self._store.get(f"admin-login-fails:{client}") or 0) >= LOGIN_ATTEMPTS

    def failed(self, client: str) -> None:
        self._store.update(f"admin-login-fails:{client}", lambda n: int(n or 0) + 1, ttl=LOGIN_WINDOW)

    def open(self) -> str:
        """A new session: returns the cookie's token (the store keeps its hash and a CSRF token)."""
        token = secrets.token_urlsafe(32)
        self._store.put(f"admin-session:{_digest(token)}", {"csrf": secrets.token_urlsafe(32)}, ttl=SESSION_TTL)
        return token

    def find(self, token: str | None) -> dict[str, Any] | None:
        """The session of this cookie token, or ``None`` (unknown, expired, or logged out)."""
        if not token or len(token) > 100:
            return None
        found = self._store.get(f"admin-session:{_digest(token)}")
        return found if isinstance(found, dict) else None

    @staticmethod
    def csrf_ok(session: dict[str, Any], given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode("utf-8", "replace"),
                                                   str(session.get("csrf", "")).encode())

    def close(self, token: str) -> None:
        """Log out: the session is gone for every worker."""
        self._store.delete(f"admin-session:{_digest(token)}")
