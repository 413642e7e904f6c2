"""``RecentErrors``: the last few failed requests this process saw, for the admin page (bounded, in memory)."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from routes.usage import Tally


class RecentErrors:
    """The newest ``size`` failed requests (when, key name, account, model, error class); never a secret.

    It listens to ``Usage`` (``book.listeners``), so it sees exactly the requests
    usage counts as errors, with the same masked labels.
    """

    def __init__(self, size: int = 20, clock: Callable[[], float] = time.time) -> None:
        self._items: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._lock, self._clock = threading.Lock(), clock

    def note(self, tally: Tally) -> None:
        for kind in tally.errors:
            with self._lock:
                self._items.append({"at": int(self._clock()), "key": tally.key, "account": tally.account,
                                    "model": tally.model, "class": kind, "status": tally.status})

    def newest_first(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(reversed(self._items))
