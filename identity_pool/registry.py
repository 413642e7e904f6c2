"""The accounts at run time: added, disabled and removed through the admin API, agreed through the shared store.

``cookie.txt``, ``COOKIE`` and ``QWEN_TOKEN`` are the configured accounts and are
never rewritten. What the admin API changes lives in one entry of the shared
state store (``accounts``), so every worker (and, with Redis, every host) serves
the same set, and it survives a restart with the store's file in the data directory:

- ``added``: accounts added at run time, by key: a cookie or token as given, or an
  email with only the SHA-256 of its password (what the site's sign-in takes;
  the password itself is never stored), and the optional proxy;
- ``flags``: per key, ``disabled`` (kept, but given no turns) or ``removed`` (a
  configured account taken out without editing its file);
- ``version``: bumped by every change, so a worker rebuilds its list only then.

Each worker reads the entry along with the health it reads for every turn
(``IdentityPool``), so a change made through one worker is served by all of
them from their next turn on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from identity_pool.accounts import Identity
from identity_pool.credentials import AccountSpec
from identity_pool.state import StateStore

KEY = "accounts"


def identity_from(spec: AccountSpec, pool_size: int, label: str = "") -> Identity:
    """The ``Identity`` an account line describes."""
    if spec.kind == "password":
        return Identity(email=spec.email, password=spec.password, proxy=spec.proxy, pool_size=pool_size,
                        label=label)
    if spec.kind == "token":
        return Identity(token=spec.secret, proxy=spec.proxy, pool_size=pool_size, label=label)
    return Identity(cookie=spec.secret, proxy=spec.proxy, pool_size=pool_size, label=label)


def public_id(identity: Identity) -> str:
    """The id the admin API shows and takes: a prefix of the hash that names the credential, not the credential."""
    return identity.key[:12]


def _entry(spec: AccountSpec, identity: Identity) -> dict[str, Any]:
    """What the store keeps of an added account: never a password, only the digest the site's sign-in takes."""
    if identity.email:
        return {"kind": "password", "email": identity.email, "password_sha256": identity.password_sha256,
                "proxy": identity.proxy, "added_at": time.time()}
    return {"kind": spec.kind, "secret": spec.secret, "proxy": identity.proxy, "added_at": time.time()}


def _identity(entry: Any, pool_size: int) -> Identity | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("proxy", ""), str):
        return None
    proxy = entry.get("proxy") or ""
    if entry.get("kind") == "password" and isinstance(entry.get("email"), str):
        identity = Identity(email=entry["email"], proxy=proxy, pool_size=pool_size)
        identity.password_sha256 = str(entry.get("password_sha256") or "")
        return identity
    secret = entry.get("secret")
    if not isinstance(secret, str) or not secret:
        return None
    if entry.get("kind") == "token":
        return Identity(token=secret, proxy=proxy, pool_size=pool_size)
    return Identity(cookie=secret, proxy=proxy, pool_size=pool_size)


def _load(value: Any) -> dict[str, Any]:
    value = value if isinstance(value, dict) else {}
    added = value.get("added") if isinstance(value.get("added"), dict) else {}
    flags = value.get("flags") if isinstance(value.get("flags"), dict) else {}
    return {"added": dict(added), "flags": dict(flags), "version": int(value.get("version") or 0)}


class AccountRegistry:
    """Reads and changes the run-time account set in the shared store; the pool applies it."""

    def __init__(self, state: StateStore, pool_size: int) -> None:
        self.state, self.pool_size = state, pool_size

    def read(self) -> Any:
        return self.state.get(KEY)

    @staticmethod
    def version(value: Any) -> int:
        return _load(value)["version"]

    def add(self, spec: AccountSpec) -> tuple[Identity, bool]:
        """Store an added account; ``False`` when one with the same credential was already served."""
        fresh: list[bool] = []
        identity = identity_from(spec, self.pool_size)

        def change(value: Any) -> Any:
            current = _load(value)
            flags = current["flags"].get(identity.key) or {}
            fresh[:] = [identity.key not in current["added"] and not flags]
            current["added"][identity.key] = _entry(spec, identity)
            current["flags"].pop(identity.key, None)  # re-adding a removed or disabled account brings it back
            current["version"] += 1
            return current

        self.state.update(KEY, change)
        return identity, fresh[0]

    def flag(self, key: str, **flags: bool) -> None:
        """Set ``disabled`` or ``removed`` on an account (an added one is dropped outright when removed)."""
        def change(value: Any) -> Any:
            current = _load(value)
            if flags.get("removed") and key in current["added"]:
                del current["added"][key]
            entry = {**(current["flags"].get(key) or {}), **flags}
            current["flags"][key] = {k: v for k, v in entry.items() if v}
            if not current["flags"][key]:
                del current["flags"][key]
            current["version"] += 1
            return current

        self.state.update(KEY, change)

    def apply(self, value: Any, configured: Iterable[Identity], known: Iterable[Identity]) -> tuple[list[Identity],
                                                                                                      frozenset[str]]:
        """The accounts to serve and the disabled keys, reusing the ``known`` identities (and their sessions)."""
        current = _load(value)
        flags = current["flags"]
        by_key = {i.key: i for i in known}
        served = [i for i in configured if not (flags.get(i.key) or {}).get("removed")]
        keys = {i.key for i in served}
        for key, entry in current["added"].items():
            if key in keys:
                continue
            identity = by_key.get(key) or _identity(entry, self.pool_size)
            if identity is not None:
                identity.label = identity.label or f"added-{key[:6]}"
                served.append(identity)
                keys.add(key)
        disabled = frozenset(k for k, f in flags.items() if isinstance(f, dict) and f.get("disabled"))
        return served, disabled
