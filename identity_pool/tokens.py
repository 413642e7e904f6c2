"""Every account's current token, agreed through the shared store, and renewed once cluster-wide.

The rules that keep a rotating refresh token alive with many workers:

- a worker uses the newest token in the store (``adopt``), read along with the
  health it reads anyway, so it costs no extra round trip;
- renewal runs under the account's lock in the store, which lapses after
  ``lock_seconds`` so a dead worker cannot hold it; inside, the stored token is
  read again, and if another worker renewed meanwhile, that token is used and the
  auth host is not called;
- the new token and rotated refresh token are written to the store before the
  lock is given back, so no worker can send the old, now dead, refresh token.

The JSON token file (``TokenStore``) stays a mirror of the store for operators
and is read at start, so tokens renewed before this change are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from errors import ServiceUnavailable, UpstreamAuthError
from identity_pool.accounts import Identity, jwt_claims
from identity_pool.state import StateStore
from identity_pool.token_store import TokenStore

logger = logging.getLogger(__name__)

Renewer = Callable[[Identity], dict[str, Any]]


def token_key(identity: Identity) -> str:
    return f"token:{identity.key}"


def _entry(identity: Identity) -> dict[str, Any]:
    return {"token": identity.token, "refresh_token": identity.refresh_token or None,
            "obtained_at": identity.obtained_at}


class Tokens:
    """Reads, renews and writes the tokens of a pool's accounts through ``state``."""

    def __init__(self, state: StateStore, renewer: Renewer | None, mirror: TokenStore | None,
                 lock_seconds: float = 90.0) -> None:
        self.state, self.renewer, self.mirror, self.lock_seconds = state, renewer, mirror, lock_seconds

    def adopt(self, identity: Identity, entry: Any) -> bool:
        """Use a stored token when it is newer than the one this worker holds; ``True`` if it did."""
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str) or not entry["token"]:
            return False
        if entry["token"] == identity.token:
            return False
        if identity.obtained_at is not None:
            if (entry.get("obtained_at") or 0) <= identity.obtained_at:
                return False
        else:  # the configured token: the stored one must outlive it (a changed cookie has another key)
            exp = jwt_claims(entry["token"]).get("exp")
            if not isinstance(exp, (int, float)) or exp <= (identity.expires_at or 0):
                return False
        identity.set_token(entry["token"], entry.get("refresh_token"), now=entry.get("obtained_at"))
        return True

    def restore(self, identities: Iterable[Identity]) -> None:
        """At start: the newest of the configured, the mirrored and the stored token of each account."""
        identities = [i for i in identities if i.renewable]
        mirrored = self.mirror.load() if self.mirror is not None else {}
        stored = self.state.get_many([token_key(i) for i in identities])
        for identity, entry in zip(identities, stored):
            from_file = self.adopt(identity, mirrored.get(identity.key))
            from_store = self.adopt(identity, entry)
            if from_file or from_store:
                logger.info("%s: using its renewed token from the %s", identity.label,
                            "state store" if from_store else "token store")
            if from_file and not from_store:  # carried over into the shared store
                self.state.update(token_key(identity), _newer(_entry(identity)))

    def renew(self, identity: Identity, stale: str | None) -> tuple[bool, bool]:
        """Renew now, once cluster-wide: (changed, fetched); ``fetched`` is False when another worker did it."""
        if self.renewer is None or not identity.renewable:
            raise UpstreamAuthError(
                f"{identity.label} is a bare token that cannot be renewed; configure its browser cookie instead."
            )
        with identity.renewing:
            if stale is not None and identity.token != stale:
                return True, False
            started = time.time()
            with self.state.lock("renew:" + identity.key, ttl=self.lock_seconds, wait=self.lock_seconds) as held:
                if not held:
                    raise ServiceUnavailable(f"{identity.label}'s token is being renewed elsewhere; retry shortly.",
                                             code="token_renewal_busy", retry_after=5.0)
                if self.adopt(identity, self.state.get(token_key(identity))) and (
                        stale is not None or (identity.obtained_at or 0) >= started):
                    return True, False  # another worker renewed it while we waited
                answer = self.renewer(identity)
                token = answer.get("token") or ""
                changed = token != identity.token
                identity.set_token(token, answer.get("refresh_token"))
                self.state.put(token_key(identity), _entry(identity))  # before the lock frees the old one
        return changed, True

    def save_mirror(self, identities: Iterable[Identity]) -> None:
        """Rewrite the JSON token file from the store, the one place every worker agrees on."""
        if self.mirror is None:
            return
        identities = [i for i in identities if i.renewable and i.token]
        stored = self.state.get_many([token_key(i) for i in identities])
        self.mirror.save({i.key: entry if isinstance(entry, dict) and entry.get("token") else _entry(i)
                          for i, entry in zip(identities, stored)})

    def sync(self, identities: Iterable[Identity]) -> None:
        """Adopt every newer stored token (before deciding which ones are due for renewal)."""
        identities = list(identities)
        for identity, entry in zip(identities, self.state.get_many([token_key(i) for i in identities])):
            self.adopt(identity, entry)


def _newer(entry: dict[str, Any]) -> Callable[[Any], Any]:
    def merge(old: Any) -> Any:
        if isinstance(old, dict) and (old.get("obtained_at") or 0) >= (entry.get("obtained_at") or 0):
            return old
        return entry
    return merge
