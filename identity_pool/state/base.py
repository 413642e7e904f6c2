"""The interface of the shared state, and the encoding every store uses for its values."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

from identity_pool.state import shares

#: An update function: the stored value (``None`` when absent) → the value to store (``None`` deletes).
Updater = Callable[[Any], Any]


class StoreError(RuntimeError):
    """The shared store could not be reached or refused an operation."""


def encode(value: Any) -> bytes:
    return orjson.dumps(value)


def decode(raw: bytes | str | None) -> Any:
    return None if raw is None else orjson.loads(raw)


class StateStore:
    """Keyed JSON values with expiry, atomic updates, counters, expiring locks and a due-time queue.

    Every method is one short round trip (a transaction in SQLite, a command or
    script in Redis), so a turn costs a handful of them. Implementations raise
    ``StoreError`` when the backing store fails.
    """

    kind = "abstract"
    shared = False  # True when other processes see the same state

    def get(self, key: str) -> Any:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        raise NotImplementedError

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def update(self, key: str, fn: Updater, ttl: float | None = None) -> Any:
        """Replace the value by ``fn(value)`` atomically across processes; returns the new value."""
        raise NotImplementedError

    def incr(self, key: str, delta: int = 1) -> int:
        raise NotImplementedError

    def hold(self, key: str, owner: str, delta: int) -> int:
        """Add ``delta`` places to ``owner``'s share of the count ``key`` (``shares``); returns the count.

        One atomic step (stores override it to keep it one round trip): the
        request path's only store call for a cap.
        """
        counted: list[int] = []

        def change(value: Any) -> Any:
            record = shares.new(value)
            counted[:] = [shares.hold(record, owner, delta)]
            return record if record["s"] or record["r"] else None

        self.update(key, change)
        return counted[0]

    def settle(self, key: str, owner: str, how: str, now: float | None = None) -> int:
        """``reap``, ``restore`` or ``forget`` ``owner``'s share of the count ``key``; returns the places moved."""
        moved: list[int] = []

        def change(value: Any) -> Any:
            if value is None:
                moved[:] = [0]
                return None
            record = shares.new(value)
            moved[:] = [shares.settle(record, owner, how, time.time() if now is None else now)]
            return record if record["s"] or record["r"] else None

        self.update(key, change)
        return moved[0]

    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take ``name`` for ``owner`` unless someone else holds it; it lapses after ``ttl`` s."""
        raise NotImplementedError

    def unlock(self, name: str, owner: str) -> None:
        raise NotImplementedError

    def schedule(self, queue: str, member: str, at: float) -> int:
        """Put (or move) ``member`` in ``queue`` due at ``at``; returns the queue's length."""
        raise NotImplementedError

    def unschedule(self, queue: str, member: str) -> None:
        raise NotImplementedError

    def take_due(self, queue: str, now: float, limit: int = 100, requeue_at: float | None = None) -> list[str]:
        """Remove and return members due by ``now``: each is handed to exactly one caller.

        With ``requeue_at`` they stay, due again then, in the same atomic step: a
        taker that dies before it is done leaves the job to the next one.
        """
        raise NotImplementedError

    def take_oldest(self, queue: str, count: int) -> list[str]:
        """Remove and return the ``count`` soonest-due members (a bounded queue's overflow)."""
        raise NotImplementedError

    def ping(self) -> None:
        """Raise ``StoreError`` unless the store answers."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "shared": self.shared}

    def close(self) -> None:
        """Release connections."""

    @contextlib.contextmanager
    def lock(self, name: str, ttl: float, wait: float) -> Iterator[bool]:
        """Hold ``name`` (cluster-wide for shared stores) for the block; yields ``False`` if not had in ``wait`` s.

        The lock lapses after ``ttl`` seconds, so a worker that dies holding it
        blocks the others for at most that long.
        """
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + wait
        delay = 0.005
        while not (held := self.try_lock(name, owner, ttl)) and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        try:
            yield held
        finally:
            if held:
                self.unlock(name, owner)
