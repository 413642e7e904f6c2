"""Stored responses of the Responses API: what ``GET /v1/responses/<id>`` serves and ``previous_response_id`` continues.

``ResponseStore`` is the small interface the routes use (``put``, ``get``,
``delete``), so a store shared by workers and hosts can replace the in-process
one; ``MemoryResponseStore`` is that in-process one: bounded in count and in
characters held, expiring, behind one lock, owned by the app's ``Gateway``.
A record keeps the response object and the conversation up to and including
its answer, as the next turn must show it to continue the same upstream chat.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class StoredResponse:
    """One finished response and the conversation it ends (``(role, text)`` as the chat route flattens it)."""

    id: str
    response: dict[str, Any]
    history: tuple[tuple[str, str], ...]

    def call_names(self) -> dict[str, str]:
        """``call_id`` → function name of the calls this response made."""
        return {str(item.get("call_id")): str(item.get("name", "")) for item in self.response.get("output", ())
                if item.get("type") == "function_call"}

    @property
    def size(self) -> int:
        """Characters held, roughly: what the store's budget counts."""
        return sum(len(text) for _, text in self.history) + len(str(self.response))


class ResponseStore(Protocol):
    def put(self, record: StoredResponse) -> None: ...

    def get(self, response_id: str) -> StoredResponse | None: ...

    def delete(self, response_id: str) -> bool: ...


class MemoryResponseStore:
    """Response id → ``StoredResponse`` in this process: the oldest go first past ``capacity`` or ``max_chars``."""

    def __init__(self, ttl: float = 3600.0, capacity: int = 1000, max_chars: int = 64_000_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.capacity, self.max_chars, self._clock = ttl, capacity, max_chars, clock
        self._entries: collections.OrderedDict[str, tuple[float, StoredResponse]] = collections.OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def put(self, record: StoredResponse) -> None:
        if record.size > self.max_chars:
            return  # larger than the whole budget: never kept, so a follow-up gets a clear 400
        with self._lock:
            self._pop(record.id)
            self._entries[record.id] = (self._clock() + self.ttl, record)
            self._chars += record.size
            while len(self._entries) > self.capacity or self._chars > self.max_chars:
                self._pop(next(iter(self._entries)))

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            self._sweep()
            entry = self._entries.get(response_id)
        return entry[1] if entry is not None else None

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._pop(response_id)

    def _pop(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self._chars -= entry[1].size
        return entry is not None

    def _sweep(self) -> None:
        """Forget expired responses (entries are in expiry order, the TTL being one)."""
        now = self._clock()
        while self._entries:
            key, (expires, _) = next(iter(self._entries.items()))
            if expires > now:
                break
            self._pop(key)
