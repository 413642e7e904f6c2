"""The state store's contract, the same for each implementation: memory, SQLite (a file) and Redis (a real server).

The shared stores are also checked across processes: updates from several processes at once lose
nothing, a queued member goes to exactly one taker, and a lock lapses when its holder is gone.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from identity_pool import MemoryStore, StateStore
from identity_pool.state.redis_store import RedisStore
from identity_pool.state.sqlite import SqliteStore


@pytest.fixture(scope="module")
def redis_url(redis_server) -> str:
    return redis_server.url


def open_kind(kind: str, where: str) -> StateStore:
    return {"memory": MemoryStore, "sqlite": SqliteStore, "redis": RedisStore}[kind](where)  # type: ignore[operator]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp: Path) -> Iterator[StateStore]:
    kind = request.param
    if kind == "memory":
        opened: StateStore = MemoryStore()
    elif kind == "sqlite":
        opened = SqliteStore(str(tmp / f"{time.monotonic_ns()}.sqlite3"))
    else:
        opened = RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{time.monotonic_ns()}:")
    yield opened
    opened.close()


def test_values_expire_and_update_is_read_modify_write(store):
    store.put("a", {"n": 1})
    store.put("gone", 1, ttl=0.05)
    assert store.get_many(["a", "missing", "gone"]) == [{"n": 1}, None, 1]
    time.sleep(0.1)
    assert store.get("gone") is None
    assert store.update("a", lambda v: {"n": v["n"] + 1}) == {"n": 2} and store.get("a") == {"n": 2}
    assert store.update("new", lambda v: v or [1]) == [1]
    store.update("a", lambda v: None)
    store.delete("new")
    assert store.get_many(["a", "new"]) == [None, None]
    assert [store.incr("c"), store.incr("c", 5), store.incr("c", -6)] == [1, 6, 0] and store.get("c") == 0


def test_locks_have_one_owner_and_lapse(store):
    assert store.try_lock("renew", "w1", ttl=0.2)
    assert not store.try_lock("renew", "w2", ttl=0.2)
    store.unlock("renew", "w2")  # not the owner: nothing happens
    assert not store.try_lock("renew", "w2", ttl=0.2)
    time.sleep(0.3)  # its holder died: the lock lapses
    assert store.try_lock("renew", "w2", ttl=5)
    store.unlock("renew", "w2")
    with store.lock("renew", ttl=5, wait=1) as held:
        assert held
        with store.lock("renew", ttl=5, wait=0.05) as again:
            assert not again


def test_the_queue_hands_each_member_out_once(store):
    assert [store.schedule("q", m, at) for m, at in (("a", 3.0), ("b", 1.0), ("c", 2.0))] == [1, 2, 3]
    assert store.schedule("q", "b", 4.0) == 3  # moved, not added
    assert store.take_due("q", now=2.5) == ["c"]
    assert store.take_due("q", now=2.5) == []
    store.unschedule("q", "a")
    assert store.take_oldest("q", 5) == ["b"] and store.take_due("q", now=10) == []


def test_a_member_taken_to_requeue_is_due_again_later(store):
    store.schedule("lq", "a", 1.0)
    store.schedule("lq", "b", 5.0)
    assert store.take_due("lq", now=2.0, requeue_at=10.0) == ["a"]
    assert store.take_due("lq", now=9.0) == ["b"], "a is not due before 10"
    assert store.take_due("lq", now=10.0) == ["a"]


def test_a_shared_count_keeps_each_owners_share(store):
    take = [store.hold("c", "a", 1), store.hold("c", "a", 1), store.hold("c", "b", 1)]
    assert take == [1, 2, 3]
    assert store.settle("c", "a", "reap") == 2 and store.settle("c", "a", "reap") == 0, "reaped once"
    assert store.get("c")["n"] == 1
    assert store.hold("c", "a", -1) == 1, "a reaped place given back leaves the count alone"
    assert store.hold("c", "a", 1) == 2
    assert store.settle("c", "a", "restore") == 1 and store.get("c")["n"] == 3
    assert [store.hold("c", "a", -1) for _ in range(3)] == [2, 1, 1], "never below what others hold"
    assert store.settle("c", "b", "forget") == 1 and store.get("c") is None


def _hammer(kind: str, where: str, rounds: int, results: multiprocessing.Queue) -> None:
    store = open_kind(kind, where)
    for _ in range(rounds):
        store.update("count", lambda v: (v or 0) + 1)
        store.incr("hits")
    results.put(store.take_due("q", now=1e12, limit=1))
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_several_processes_lose_no_update_and_share_the_queue(kind, tmp, request):
    where = str(tmp / "shared.sqlite3") if kind == "sqlite" else request.getfixturevalue("redis_url")
    store = open_kind(kind, where)
    for member in ("m1", "m2", "m3", "m4"):
        store.schedule("q", member, 0.0)
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    workers = [spawn.Process(target=_hammer, args=(kind, where, 100, results)) for _ in range(4)]
    for w in workers:
        w.start()
    taken = sorted(m for _ in workers for m in results.get(timeout=60))
    for w in workers:
        w.join(30)
    assert store.get("count") == 400 and store.get("hits") == 400
    assert taken == ["m1", "m2", "m3", "m4"], "each queued chat is deleted by exactly one worker"
    store.close()


def test_one_process_s_updates_of_one_key_do_not_conflict_with_each_other(redis_url):
    """Hundreds of a worker's requests update one account's record at once: on Redis each conflict is a retry,
    and without the worker's own lock they retried without end (500 streams on one worker: 0.04x direct)."""
    store = RedisStore(redis_url, prefix=f"t{time.monotonic_ns()}:")
    calls: list[int] = []

    def bump(value):
        calls.append(1)
        return (value or 0) + 1

    threads = [threading.Thread(target=lambda: [store.update("hot", bump) for _ in range(20)]) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store.get("hot") == 400
    assert len(calls) == 400, f"{len(calls) - 400} retries: the process's own updates conflicted"
    store.close()
