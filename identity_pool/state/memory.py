"""``MemoryStore``: the state in one process's own dicts, for a single process and as the fallback."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from identity_pool.state.base import StateStore, Updater, decode, encode


class MemoryStore(StateStore):
    """The interface over plain dicts behind one lock; values are kept encoded, as the shared stores keep them."""

    kind = "memory"
    shared = False

    def __init__(self, max_keys: int = 100_000) -> None:
        self._values: dict[str, tuple[bytes, float | None]] = {}
        self._queues: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def _live(self, key: str, now: float) -> bytes | None:
        found = self._values.get(key)
        if found is None:
            return None
        if found[1] is not None and found[1] <= now:
            del self._values[key]
            return None
        return found[0]

    def _set(self, key: str, raw: bytes | None, ttl: float | None, now: float) -> None:
        if raw is None:
            self._values.pop(key, None)
            return
        self._values[key] = (raw, None if ttl is None else now + ttl)
        if len(self._values) > self._max_keys:  # bounded: drop expired entries, then the oldest
            for old in [k for k, (_, exp) in self._values.items() if exp is not None and exp <= now]:
                del self._values[old]
            while len(self._values) > self._max_keys:
                del self._values[next(iter(self._values))]

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        now = time.time()
        with self._lock:
            return [decode(self._live(k, now)) for k in keys]

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        raw = encode(value)
        with self._lock:
            self._set(key, raw, ttl, time.time())

    def delete(self, key: str) -> None:
        with self._lock:
            self._values.pop(key, None)

    def update(self, key: str, fn: Updater, ttl: float | None = None) -> Any:
        now = time.time()
        with self._lock:
            value = fn(decode(self._live(key, now)))
            self._set(key, None if value is None else encode(value), ttl, now)
            return value

    def incr(self, key: str, delta: int = 1) -> int:
        return self.update(key, lambda v: int(v or 0) + delta)

    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        now = time.time()
        with self._lock:
            if self._live("lock:" + name, now) is not None:
                return False
            self._set("lock:" + name, encode(owner), ttl, now)
            return True

    def unlock(self, name: str, owner: str) -> None:
        with self._lock:
            if self._live("lock:" + name, time.time()) == encode(owner):
                del self._values["lock:" + name]

    def schedule(self, queue: str, member: str, at: float) -> int:
        with self._lock:
            members = self._queues.setdefault(queue, {})
            members.pop(member, None)
            members[member] = at
            return len(members)

    def unschedule(self, queue: str, member: str) -> None:
        with self._lock:
            self._queues.get(queue, {}).pop(member, None)

    def take_due(self, queue: str, now: float, limit: int = 100, requeue_at: float | None = None) -> list[str]:
        with self._lock:
            members = self._queues.get(queue, {})
            due = sorted((at, m) for m, at in members.items() if at <= now)[:limit]
            for _, member in due:
                del members[member]
                if requeue_at is not None:
                    members[member] = requeue_at
            return [m for _, m in due]

    def take_oldest(self, queue: str, count: int) -> list[str]:
        with self._lock:
            members = self._queues.get(queue, {})
            oldest = sorted((at, m) for m, at in members.items())[:max(0, count)]
            for _, member in oldest:
                del members[member]
            return [m for _, m in oldest]
