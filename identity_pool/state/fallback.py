"""``FallbackStore``: a worker keeps serving from its own memory while the shared store is unreachable.

Start-up is strict (``open_store`` raises a clear ``StoreError``); at run time a
failed operation switches the worker to its ``MemoryStore`` with a warning that
``/health`` shows, never a 500. Every few seconds it tries the shared store
again; when it answers, tokens renewed meanwhile are written back to it (the
newer of two entries wins), so no renewed token is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from identity_pool.state.base import StateStore, StoreError, Updater
from identity_pool.state.memory import MemoryStore

logger = logging.getLogger(__name__)

#: Keys written back when the shared store returns (the pool's token entries).
DURABLE_PREFIX = "token:"


def _newer(entry: Any) -> Updater:
    def merge(old: Any) -> Any:
        if isinstance(old, dict) and (old.get("obtained_at") or 0) > (entry.get("obtained_at") or 0):
            return old
        return entry
    return merge


class FallbackStore(StateStore):
    """The shared ``primary`` while it answers; this worker's own memory while it does not."""

    RETRY_SECONDS = 2.0

    def __init__(self, primary: StateStore) -> None:
        self.primary, self.local = primary, MemoryStore()
        self.kind, self.shared = primary.kind, primary.shared
        self._down_since: float | None = None
        self._error = ""
        self._next_try = 0.0
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self.failures = 0

    @property
    def degraded(self) -> bool:
        return self._down_since is not None

    def _use(self, method: str, *args: Any, durable: str | None = None) -> Any:
        if self._down_since is not None and not self._recovered():
            if durable is not None:
                self._dirty.add(durable)
            return getattr(self.local, method)(*args)
        try:
            return getattr(self.primary, method)(*args)
        except StoreError as exc:
            self._fail(exc)
            if durable is not None:
                self._dirty.add(durable)
            return getattr(self.local, method)(*args)

    def _fail(self, exc: StoreError) -> None:
        with self._lock:
            self.failures += 1
            self._error, self._next_try = str(exc), time.monotonic() + self.RETRY_SECONDS
            if self._down_since is None:
                self._down_since = time.time()
                logger.warning("shared state store unreachable (%s); this worker serves from its own memory "
                               "until it returns", exc)

    def _recovered(self) -> bool:
        if time.monotonic() < self._next_try:
            return False
        try:
            self.primary.ping()
            for key in sorted(self._dirty):
                entry = self.local.get(key)
                if isinstance(entry, dict):
                    self.primary.update(key, _newer(entry))
        except StoreError as exc:
            self._fail(exc)
            return False
        with self._lock:
            self._dirty.clear()
            self._down_since = None
        logger.warning("shared state store is back; this worker uses it again")
        return True

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        return self._use("get_many", keys)

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        if key.startswith(DURABLE_PREFIX):  # also kept here, to write back if the store fails later
            self.local.put(key, value, ttl)
        self._use("put", key, value, ttl, durable=key if key.startswith(DURABLE_PREFIX) else None)

    def delete(self, key: str) -> None:
        self._use("delete", key)

    def update(self, key: str, fn: Updater, ttl: float | None = None) -> Any:
        return self._use("update", key, fn, ttl)

    def incr(self, key: str, delta: int = 1) -> int:
        return self._use("incr", key, delta)

    def hold(self, key: str, owner: str, delta: int) -> int:
        return self._use("hold", key, owner, delta)

    def settle(self, key: str, owner: str, how: str, now: float | None = None) -> int:
        return self._use("settle", key, owner, how, now)

    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        return self._use("try_lock", name, owner, ttl)

    def unlock(self, name: str, owner: str) -> None:
        self._use("unlock", name, owner)

    def schedule(self, queue: str, member: str, at: float) -> int:
        return self._use("schedule", queue, member, at)

    def unschedule(self, queue: str, member: str) -> None:
        self._use("unschedule", queue, member)

    def take_due(self, queue: str, now: float, limit: int = 100, requeue_at: float | None = None) -> list[str]:
        return self._use("take_due", queue, now, limit, requeue_at)

    def take_oldest(self, queue: str, count: int) -> list[str]:
        return self._use("take_oldest", queue, count)

    def ping(self) -> None:
        self.primary.ping()

    def describe(self) -> dict[str, Any]:
        out = {**self.primary.describe(), "status": "ok"}
        if self._down_since is not None:
            out.update(status="degraded", since=round(self._down_since), error=self._error,
                       warning="the shared state store is unreachable: this worker serves from its own memory, "
                               "so accounts, conversations and limits are per worker until it returns")
        return out

    def close(self) -> None:
        self.primary.close()


def open_store(settings: Any) -> StateStore:
    """The store a process uses: Redis with ``REDIS_URL``, else SQLite at ``STATE_FILE``, else memory.

    Raises ``StoreError`` with a clear message when the configured store cannot
    be reached at start.
    """
    if settings.REDIS_URL:
        from identity_pool.state.redis_store import RedisStore  # the client is needed only then

        store: StateStore = RedisStore(settings.REDIS_URL)
    elif settings.STATE_FILE:
        from identity_pool.state.sqlite import SqliteStore

        store = SqliteStore(settings.STATE_FILE)
    else:
        return MemoryStore()
    try:
        store.ping()
    except StoreError as exc:
        raise StoreError(f"the shared state store does not answer ({exc}); start it or fix "
                         f"{'REDIS_URL' if settings.REDIS_URL else 'STATE_FILE'}") from None
    return FallbackStore(store)
