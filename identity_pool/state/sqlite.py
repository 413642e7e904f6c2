"""``SqliteStore``: the default shared state, one SQLite file in the data directory.

Why SQLite: it ships with Python, needs no server, and its file locks make
every worker on a host see one state. WAL mode lets readers run beside the one
writer; each operation is one short transaction (``BEGIN IMMEDIATE`` for
read-modify-write), and a busy timeout rides out another worker's commit.
``synchronous=NORMAL`` in WAL keeps every commit atomic and costs no fsync per
write; a power cut may lose the last moments, never corrupt the file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from identity_pool.state.base import StateStore, StoreError, Updater, decode, encode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL, exp REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sched (q TEXT NOT NULL, m TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (q, m))
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sched_due ON sched (q, at);
"""


class SqliteStore(StateStore):
    """The interface over one SQLite file shared by every worker on the host."""

    kind = "sqlite"
    shared = True

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            os.chmod(self.path, 0o600)  # it holds tokens
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open STATE_FILE {self.path}: {exc}") from None
        self._lock = threading.Lock()  # one connection per process, one statement at a time
        self._purged = 0.0

    @contextlib.contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                if write:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._db
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                else:
                    yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"state file {self.path}: {exc}") from None

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        if not keys:
            return []
        now = time.time()
        marks = ",".join("?" * len(keys))
        with self._tx() as db:
            rows = dict(db.execute(f"SELECT k, v FROM kv WHERE k IN ({marks}) AND (exp IS NULL OR exp > ?)",
                                   (*keys, now)).fetchall())
        return [decode(rows.get(k)) for k in keys]

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        exp = None if ttl is None else time.time() + ttl
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO kv (k, v, exp) VALUES (?, ?, ?)", (key, encode(value), exp))
        self._purge()

    def delete(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM kv WHERE k = ?", (key,))

    def update(self, key: str, fn: Updater, ttl: float | None = None) -> Any:
        now = time.time()
        with self._tx(write=True) as db:
            row = db.execute("SELECT v FROM kv WHERE k = ? AND (exp IS NULL OR exp > ?)", (key, now)).fetchone()
            value = fn(decode(row[0]) if row else None)
            if value is None:
                db.execute("DELETE FROM kv WHERE k = ?", (key,))
            else:
                db.execute("INSERT OR REPLACE INTO kv (k, v, exp) VALUES (?, ?, ?)",
                           (key, encode(value), None if ttl is None else now + ttl))
        return value

    def incr(self, key: str, delta: int = 1) -> int:
        with self._tx() as db:  # one statement: atomic on its own
            row = db.execute("INSERT INTO kv (k, v, exp) VALUES (?, ?, NULL) ON CONFLICT (k) DO UPDATE "
                             "SET v = CAST(CAST(v AS INTEGER) + ? AS TEXT) RETURNING v",
                             (key, str(delta), delta)).fetchone()
        return int(row[0])

    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        now = time.time()
        with self._tx() as db:
            row = db.execute("INSERT INTO kv (k, v, exp) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE "
                             "SET v = excluded.v, exp = excluded.exp WHERE kv.exp <= ? RETURNING v",
                             ("lock:" + name, encode(owner), now + ttl, now)).fetchone()
        return row is not None

    def unlock(self, name: str, owner: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM kv WHERE k = ? AND v = ?", ("lock:" + name, encode(owner)))

    def schedule(self, queue: str, member: str, at: float) -> int:
        with self._tx() as db:  # one commit; the length is read after it (a bound, not a promise)
            db.execute("INSERT OR REPLACE INTO sched (q, m, at) VALUES (?, ?, ?)", (queue, member, at))
            return db.execute("SELECT COUNT(*) FROM sched WHERE q = ?", (queue,)).fetchone()[0]

    def unschedule(self, queue: str, member: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sched WHERE q = ? AND m = ?", (queue, member))

    def take_due(self, queue: str, now: float, limit: int = 100, requeue_at: float | None = None) -> list[str]:
        return self._take("SELECT m FROM sched WHERE q = ? AND at <= ? ORDER BY at LIMIT ?", (queue, now, limit),
                          queue, requeue_at)

    def take_oldest(self, queue: str, count: int) -> list[str]:
        if count <= 0:
            return []
        return self._take("SELECT m FROM sched WHERE q = ? ORDER BY at LIMIT ?", (queue, count), queue)

    def _take(self, query: str, args: tuple[Any, ...], queue: str, requeue_at: float | None = None) -> list[str]:
        with self._tx(write=True) as db:
            members = [m for (m,) in db.execute(query, args).fetchall()]
            if requeue_at is None:
                db.executemany("DELETE FROM sched WHERE q = ? AND m = ?", [(queue, m) for m in members])
            else:
                db.executemany("UPDATE sched SET at = ? WHERE q = ? AND m = ?",
                               [(requeue_at, queue, m) for m in members])
        return members

    def _purge(self) -> None:
        """Drop expired rows now and then; reads already skip them."""
        now = time.time()
        if now - self._purged < 60:
            return
        self._purged = now
        with self._tx() as db:
            db.execute("DELETE FROM kv WHERE exp IS NOT NULL AND exp <= ?", (now,))

    def ping(self) -> None:
        with self._tx() as db:
            db.execute("SELECT 1")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "shared": True, "file": self.path.name}

    def close(self) -> None:
        with self._lock:
            self._db.close()
