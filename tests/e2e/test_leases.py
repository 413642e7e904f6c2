"""Places a dead worker held in the cluster-wide counts go back: ``kill -9``, a vanished host, a pause, a clean stop.

With ``GLOBAL_LIMITS`` the admission count and each account's ``in_flight`` live in the shared store. The
production command runs against the emulator, streams are held open (stalled by the emulator), and a worker
or a whole instance is killed with SIGKILL, paused with SIGSTOP or stopped cleanly; ``/health`` must come back
to what the live workers hold within the lease (``WORKER_LEASE_SECONDS``, short here), and new requests are
admitted up to the limits again. Every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_client
import requests

from identity_pool import Leases
from identity_pool.state.redis_store import RedisStore
from identity_pool.state.sqlite import SqliteStore
from tests.helpers import API_KEY, Gunicorn, cookie

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "qwen3.7-plus"
LEASE = 5.0  # seconds; a beat every LEASE / 6: a live worker must miss five in a row to be reaped
BEAT = LEASE / 6
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def stalled(fake) -> Iterator[None]:
    """Every answer stops after a few events and stays open until the test ends."""
    fake.configure(answer="abcdefgh", chunk_chars=2, stall_after_events=3)
    yield
    fake.configure(stall_after_events=None)
    fake.release_stalls()


@pytest.fixture
def start(fake_server, tmp: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Gunicorn]]:
    """Start instances of the production command sharing one fresh state file (or one Redis database)."""
    case, started = Path(tempfile.mkdtemp(dir=tmp)), []
    account = cookie("user-0")  # one account for every instance (a new cookie would be another account)

    def run(workers: int, **settings: object) -> Gunicorn:
        base = {"COOKIE": account, "GLOBAL_LIMITS": "true", "WORKER_LEASE_SECONDS": LEASE,
                "READ_TIMEOUT": 120}  # a stalled answer must not time out during the test
        instance = Gunicorn(fake_server.base_url, case, workers, **{**base, **settings})
        started.append(instance)
        return instance.start()

    yield run
    for instance in started:
        if instance.process is not None and instance.process.poll() is None:
            for pid in instance.worker_pids():
                os.kill(pid, signal.SIGCONT)  # a paused worker must be able to stop
        instance.stop()


class Stream:
    """One streamed answer held open on its own connection (its session lives as long as it does:
    ``requests.post`` closes the connection of its one-off session within a second)."""

    def __init__(self, url: str) -> None:
        self.session = requests.Session()
        self.resp = self.session.post(url + "/v1/chat/completions", headers=AUTH, stream=True, timeout=30,
                                      json={**BODY, "stream": True})
        assert self.resp.status_code == 200, self.resp.text
        self.chunks = self.resp.iter_content(chunk_size=None)
        assert next(self.chunks).startswith(b"data: ")

    def rest(self) -> bytes:
        return b"".join(self.chunks)

    def close(self) -> None:
        self.resp.close()
        self.session.close()


def open_stream(url: str) -> Stream:
    return Stream(url)


def refusal(url: str) -> str:
    """The error code of one more request (a new connection): it must be refused."""
    resp = requests.post(url + "/v1/chat/completions", headers=AUTH, json=BODY, timeout=30)
    assert resp.status_code == 429, resp.text
    return resp.json()["error"]["code"]


def figures(instance: Gunicorn) -> tuple[int, int]:
    """(requests admitted cluster-wide, turns in flight on every account), as ``/health`` reports them."""
    health = instance.health()
    return health["requests"]["active"], sum(a["in_flight"] for a in health["accounts"]["accounts"])


def wait_for(instance: Gunicorn, expected: tuple[int, int], within: float) -> float:
    """Poll ``figures`` until they are ``expected``; the seconds it took."""
    began = time.monotonic()
    seen = figures(instance)
    while seen != expected:
        assert time.monotonic() - began < within, \
            f"/health still says {seen}, not {expected}, after {within} s:\n{instance.log.read_text()[-3000:]}"
        time.sleep(0.05)
        seen = figures(instance)
    return time.monotonic() - began


def held_by_worker(instance: Gunicorn) -> dict[int, int]:
    """Each worker's own open requests, from its own ``/health`` (each asked on a new connection)."""
    pids, seen, deadline = set(instance.worker_pids()), {}, time.monotonic() + 30
    while pids - seen.keys():
        assert time.monotonic() < deadline, f"workers {pids - seen.keys()} never answered /health"
        health = instance.health()
        if health["worker"] in pids:
            seen[health["worker"]] = health["requests"]["active_here"]
    return seen


def close(streams: list[Stream]) -> None:
    for stream in streams:
        stream.close()


# ----------------------------------------------------------------- one host, SQLite


def test_a_killed_workers_places_come_back_within_the_lease(start, fake, stalled):
    host = start(3, MAX_CONCURRENT_REQUESTS=6)
    streams = [open_stream(host.url) for _ in range(6)]
    try:
        assert fake.wait_stalled(timeout=10, count=6)
        assert figures(host) == (6, 6)
        assert refusal(host.url) == "too_many_concurrent_requests"
        held = held_by_worker(host)
        victim = max(held, key=held.__getitem__)
        left = 6 - held[victim]
        os.kill(victim, signal.SIGKILL)
        took = wait_for(host, (left, left), within=2 * LEASE + 5)
        assert took < LEASE + 2 * BEAT + 3, f"given back after {took:.1f} s, the lease is {LEASE} s"
        for _ in range(3):  # and it stays so: two or more survivors did not both subtract
            assert figures(host) == (left, left)
        streams += [open_stream(host.url) for _ in range(held[victim])]
        assert refusal(host.url) == "too_many_concurrent_requests", "admitted up to the limit, not past it"
        deadline = time.monotonic() + 10  # each worker's /health tells what its last beat saw
        while host.health()["workers"]["reaped"] < 1:
            assert time.monotonic() < deadline, "/health never counted the reaped worker"
            time.sleep(0.05)
    finally:
        fake.release_stalls()
        close(streams)
    wait_for(host, (0, 0), within=10)


def test_a_paused_worker_is_reaped_then_counts_its_places_again(start, fake, stalled):
    host = start(2, MAX_CONCURRENT_REQUESTS=4)
    streams = [open_stream(host.url) for _ in range(4)]
    try:
        assert fake.wait_stalled(timeout=10, count=4)
        held = held_by_worker(host)
        victim = max(held, key=held.__getitem__)
        os.kill(victim, signal.SIGSTOP)  # a pause longer than the lease: a GC storm, a blocked loop
        try:
            wait_for(host, (4 - held[victim], 4 - held[victim]), within=2 * LEASE + 5)
        finally:
            os.kill(victim, signal.SIGCONT)
        wait_for(host, (4, 4), within=2 * LEASE)  # it restores its places: its streams are still open
        assert refusal(host.url) == "too_many_concurrent_requests"
        os.kill(victim, signal.SIGKILL)  # back, then dead for good: reaped again
        wait_for(host, (4 - held[victim], 4 - held[victim]), within=2 * LEASE + 5)
    finally:
        fake.release_stalls()
        close(streams)
    wait_for(host, (0, 0), within=10)  # every place given back once: none left over, none below zero


# ----------------------------------------------------------------- two hosts, one redis-server


def test_a_killed_host_gives_its_places_back(start, fake, stalled, redis_server):
    redis_client.Redis.from_url(redis_server.url).flushdb()
    settings = {"REDIS_URL": redis_server.url, "ACCOUNT_MAX_CONCURRENCY": 3, "ACCOUNT_QUEUE_TIMEOUT": 1}
    doomed, survivor = start(1, **settings), start(1, **settings)
    streams = [open_stream(doomed.url), open_stream(doomed.url), open_stream(survivor.url)]
    try:
        assert fake.wait_stalled(timeout=10, count=3)
        assert figures(survivor) == (3, 3)
        assert refusal(survivor.url) == "accounts_busy"
        doomed.kill()  # master and worker, -9: no exit hook runs
        took = wait_for(survivor, (1, 1), within=2 * LEASE + 5)
        assert took < LEASE + 2 * BEAT + 3, f"given back after {took:.1f} s, the lease is {LEASE} s"
        streams += [open_stream(survivor.url), open_stream(survivor.url)]
        assert refusal(survivor.url) == "accounts_busy", "the account is usable up to its cap again, not past it"
    finally:
        fake.release_stalls()
        close(streams)
    wait_for(survivor, (0, 0), within=10)


def test_a_paused_host_is_reaped_then_counts_its_places_again(start, fake, stalled, redis_server):
    redis_client.Redis.from_url(redis_server.url).flushdb()
    settings = {"REDIS_URL": redis_server.url, "MAX_CONCURRENT_REQUESTS": 3}
    paused, running = start(1, **settings), start(1, **settings)
    streams = [open_stream(paused.url), open_stream(paused.url), open_stream(running.url)]
    try:
        assert fake.wait_stalled(timeout=10, count=3)
        [worker] = paused.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        try:
            wait_for(running, (1, 1), within=2 * LEASE + 5)
        finally:
            os.kill(worker, signal.SIGCONT)
        wait_for(running, (3, 3), within=2 * LEASE)
        assert refusal(running.url) == "too_many_concurrent_requests"
        fake.release_stalls()
        for stream in streams:
            assert stream.rest().rstrip().endswith(b"data: [DONE]")
    finally:
        fake.release_stalls()
        close(streams)
    wait_for(running, (0, 0), within=10)


def test_a_clean_stop_gives_places_back_at_once(start, fake, stalled, redis_server):
    redis_client.Redis.from_url(redis_server.url).flushdb()
    settings = {"REDIS_URL": redis_server.url, "WORKER_LEASE_SECONDS": 300}  # far longer than the test
    leaving, staying = start(1, **settings), start(1, **settings)
    streams = [open_stream(leaving.url), open_stream(leaving.url), open_stream(staying.url)]
    try:
        assert fake.wait_stalled(timeout=10, count=3)
        assert figures(staying) == (3, 3)
        leaving.stop()
        wait_for(staying, (1, 1), within=10)
    finally:
        fake.release_stalls()
        close(streams)
    wait_for(staying, (0, 0), within=10)


# ----------------------------------------------------------------- survivors racing for one dead lease


def _survivor(kind: str, where: str, gate, results) -> None:
    store = SqliteStore(where) if kind == "sqlite" else RedisStore(where)
    moved: list[int] = []

    def ledger(owner: str, how: str) -> int:
        moved.append(store.settle("count", owner, how))
        return moved[-1]

    leases = Leases(store, lease=30)
    leases.add(ledger)
    gate.wait(timeout=30)
    leases.beat()
    results.put(sum(moved))
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_survivors_racing_for_one_dead_lease_subtract_it_once(kind, tmp, request):
    where = str(tmp / f"race-{time.monotonic_ns()}.sqlite3") if kind == "sqlite" \
        else request.getfixturevalue("redis_server").url
    store = SqliteStore(where) if kind == "sqlite" else RedisStore(where)
    if kind == "redis":
        redis_client.Redis.from_url(where).flushdb()
    for owner, places in (("dead", 3), ("alive", 2)):
        for _ in range(places):
            store.hold("count", owner, 1)
    store.schedule(Leases.QUEUE, "dead", time.time() - 1)  # its lease lapsed
    spawn = multiprocessing.get_context("spawn")
    gate, results = spawn.Barrier(6), spawn.Queue()
    survivors = [spawn.Process(target=_survivor, args=(kind, where, gate, results)) for _ in range(6)]
    for process in survivors:
        process.start()
    moved = sorted(results.get(timeout=60) for _ in survivors)
    for process in survivors:
        process.join(30)
    assert moved == [0, 0, 0, 0, 0, 3], "one survivor took the lease and gave back its 3 places"
    assert store.get("count")["n"] == 2 and store.get(Leases.REAPED) == 1
    store.close()


def test_a_reaper_that_dies_half_way_leaves_the_job_to_the_next(tmp):
    path = str(tmp / f"half-{time.monotonic_ns()}.sqlite3")
    store = SqliteStore(path)
    store.hold("count", "dead", 2)
    store.schedule(Leases.QUEUE, "dead", time.time() - 1)
    now = time.time()
    assert store.take_due(Leases.QUEUE, now, requeue_at=now + 1) == ["dead"]  # a reaper took it, then died
    leases = Leases(store, lease=0.5)
    leases.add(lambda owner, how: store.settle("count", owner, how))
    leases.beat()
    assert store.get("count")["n"] == 2, "not due again yet"
    deadline = time.monotonic() + 10
    while store.get("count") is not None and store.get("count")["n"]:
        assert time.monotonic() < deadline, "nobody finished the dead reaper's job"
        time.sleep(0.05)
        leases.beat()
    assert store.get(Leases.REAPED) == 1

    def queued() -> set[str]:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return {m for (m,) in db.execute("SELECT m FROM sched WHERE q = ?", (Leases.QUEUE,))}

    assert "dead" in queued(), "kept a lease longer, in case it comes back and dies again"
    deadline = time.monotonic() + 10
    while "dead" in queued():
        assert time.monotonic() < deadline, "the dead worker's lease was never dropped"
        time.sleep(0.05)
        leases.beat()
    assert queued() == {leases.worker_id}
    store.close()
