"""``Leases``: each worker's lease in the shared store, so the places a dead worker held in shared counts go back.

Every worker has a random id and holds its places in the shared counts (the
requests admitted cluster-wide, each account's turns in flight) as its own share
(``state.shares``). A heartbeat, a background thread (a greenlet under gevent)
like the token refresher, renews the worker's lease: its id in the ``workers``
queue of the store, due ``lease`` seconds ahead. A worker killed without notice
(``kill -9``, the OOM killer, a host that vanished) stops renewing; the first
live worker whose heartbeat finds the lease due takes it (the queue hands each
member to one caller) and reaps the dead worker's shares from every count; a
lease later, it looks once more (a worker that came back and died meanwhile is
reaped again), then drops the lease.

A worker that was only slow (a pause longer than the lease) finds a "lost" mark
left by its reaper at its next beat and restores its shares: reaping and
restoring are both exact moves of the owner's own numbers, so nothing is counted
twice or lost whatever the order. A clean exit (gunicorn's ``worker_exit``)
forgets the worker's shares at once and gives its lease up.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from identity_pool.state import StateStore, StoreError
from identity_pool.state.shares import GRACE

logger = logging.getLogger(__name__)

#: A ledger keeps shared counts: ``settle(owner, how)`` reaps, restores or forgets that owner's places in
#: each of them and returns how many moved.
Ledger = Callable[[str, str], int]


class Leases:
    """This worker's lease and heartbeat, and the reaping of the leases that lapsed."""

    QUEUE = "workers"
    LOST = "worker-lost:"
    REAPED = "workers:reaped"

    def __init__(self, state: StateStore, lease: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.worker_id = uuid.uuid4().hex
        self.lease = lease
        #: Six beats per lease: a worker must miss five in a row (a pause of 5/6 of the lease) to be reaped.
        self.every = lease / 6
        self._state, self._clock = state, clock
        self._ledgers: list[Ledger] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen = {"leased": 0, "reaped": 0}

    def add(self, ledger: Ledger) -> None:
        """Keep ``ledger``'s counts in step with the leases (the pool, the admission count)."""
        self._ledgers.append(ledger)

    def start(self) -> None:
        """Beat in the background (once); only a shared store has other workers to agree with."""
        if self._thread is not None or not self._state.shared:
            return
        self.beat()
        self._thread = threading.Thread(target=self._run, name="qwen2openai-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.beat()
            except Exception:  # the heartbeat must outlive any one bad beat
                logger.exception("lease heartbeat failed")

    def beat(self) -> None:
        """Renew this worker's lease, restore its places if they were reaped, and reap the lapsed leases."""
        now = self._clock()
        self._seen["leased"] = self._state.schedule(self.QUEUE, self.worker_id, now + self.lease)
        lost, reaped = self._state.get_many([self.LOST + self.worker_id, self.REAPED])
        self._seen["reaped"] = int(reaped or 0)
        if lost is not None:
            moved = self._settle(self.worker_id, "restore")
            self._state.update(self.LOST + self.worker_id, lambda mark: None if mark == lost else mark)
            logger.warning("this worker's lease lapsed while it was alive (a pause longer than %.0f s?); "
                           "its %d place(s) count again", self.lease, moved)
        # Taken and due again one lease later in one step: if this worker dies half-way through a reap,
        # another one finishes it (reaping twice moves nothing), and a reaped worker is looked at once more.
        for dead in self._state.take_due(self.QUEUE, now, limit=16, requeue_at=now + self.lease):
            if dead != self.worker_id:
                self._reap(dead)

    def _reap(self, dead: str) -> None:
        """Give ``dead``'s places back, and mark it "lost"; its lease goes only when a lease later it still is.

        A worker that was only slow restores its places and clears the mark at
        its next beat, and its own beats keep its lease from falling due again;
        one that comes back and then dies for good is reaped again then.
        """
        mark = self._state.get(self.LOST + dead)
        moved = self._settle(dead, "reap")
        if mark is None:
            self._state.put(self.LOST + dead, uuid.uuid4().hex, ttl=max(GRACE, 3 * self.lease))
            self._state.incr(self.REAPED)
            logger.warning("a worker stopped renewing its lease (killed?); its %d place(s) in the shared counts "
                           "are given back", moved)
        elif self._state.get(self.LOST + dead) == mark:  # reaped a lease ago and never came back: gone
            self._state.unschedule(self.QUEUE, dead)

    def _settle(self, owner: str, how: str) -> int:
        return sum(ledger(owner, how) for ledger in self._ledgers)

    def snapshot(self) -> dict[str, Any]:
        """For ``/health``: counts only, as of the last beat."""
        if self._thread is None:
            return {"leases": "off"}
        return {"leased": self._seen["leased"], "reaped": self._seen["reaped"], "lease_s": self.lease}

    def close(self) -> None:
        """Stop beating and give every place and the lease back at once (a clean exit)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(timeout=5)
        try:
            moved = self._settle(self.worker_id, "forget")
            self._state.unschedule(self.QUEUE, self.worker_id)
        except StoreError as exc:
            logger.warning("could not give this worker's places back (%s); other workers will after %.0f s",
                           exc, self.lease)
            return
        if moved:
            logger.info("gave back %d place(s) in the shared counts on exit", moved)
