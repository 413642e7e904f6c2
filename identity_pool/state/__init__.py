"""Shared state: what every worker (and, with Redis, every host) must agree on, behind one small interface.

- ``base``: ``StateStore``, the interface (keyed JSON values with expiry, atomic
  read-modify-write, counters, shared counts with each worker's share, expiring
  locks, a due-time queue) and ``StoreError``.
- ``memory``: ``MemoryStore``, one process's own dicts (a single process, and the fallback).
- ``sqlite``: ``SqliteStore``, the default: one file in the data directory, WAL mode,
  correct for any number of workers on one host.
- ``redis_store``: ``RedisStore``, when ``REDIS_URL`` is set: any number of hosts.
- ``shares``: a count every worker adds to, kept with each worker's share of it (the
  admission count, an account's turns in flight), so a dead worker's share can be reaped.
- ``fallback``: ``FallbackStore``, which keeps a worker serving from its own memory
  while the shared store is unreachable, and writes tokens back when it returns.

``open_store(settings)`` builds the store a process uses; ``create_app`` passes the
one object to the pool, the conversations and the upload cache.
"""

from identity_pool.state.base import StateStore, StoreError
from identity_pool.state.fallback import FallbackStore, open_store
from identity_pool.state.memory import MemoryStore

__all__ = ["FallbackStore", "MemoryStore", "StateStore", "StoreError", "open_store"]
