"""What the shared state costs one turn: the store calls of a turn, timed for each store.

    python -m bench.state [--turns 5000] [--usage] [--admission]

A turn's store calls, as the proxy makes them: the pool's read of every account and its claim of one,
the conversation lookups (``preferred``, then ``start``), remembering the answer, and the release. Run in
one process for the per-process memory store, the default SQLite file and a redis-server started here on a
loopback port; the figure is CPU-and-wall microseconds per turn, to compare with the few milliseconds a turn
costs the worker (bench/README.md). ``--usage`` times each store twice, without and with what a turn adds
for usage and metrics (its ``Tally`` written to the hourly row, the Prometheus counters of its request).
``--admission`` also times a request's place in the cluster-wide admission count (``GLOBAL_LIMITS``): taken
and given back as a plain counter (``incr``, before leases) and as this worker's share (``hold``), with eight
other workers holding places in the same count.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from identity_pool import Identity, IdentityPool, MemoryStore, StateStore
from identity_pool.state.redis_store import RedisStore
from identity_pool.state.sqlite import SqliteStore
from qwen_client.conversations import ConversationStore
from routes.metrics import Metrics
from routes.usage import Tally, Usage
from tests.fake_qwen import make_jwt
from tests.helpers import free_port


def one_turn(pool: IdentityPool, chats: ConversationStore, n: int) -> None:
    keys = [f"key-{n}-{i}" for i in range(3)]
    chats.find(keys, ["user", "assistant", "user"])  # preferred()
    identity = pool.acquire()
    chats.find(keys, ["user", "assistant", "user"])  # start()
    chats.remember(f"answer-{n}", identity.account_id, f"chat-{n}", "response")
    pool.release(identity)


def counted_turn(pool: IdentityPool, chats: ConversationStore, n: int, book: Usage, metrics: Metrics) -> None:
    """A turn and its usage and metrics bookkeeping, as ``track_turn`` and the request hooks do it."""
    tally = Tally(book.record, "alice")
    tally.add(f"account-{n % 3}", "qwen3.7-plus")
    tally.turn_opened()
    metrics.ttfb.observe(0.01)
    metrics.open_streams.inc()
    metrics.requests.labels("/v1/chat/completions", "200").inc()
    tally.request_ended(200)
    one_turn(pool, chats, n)
    metrics.open_streams.dec()
    tally.add(prompt_tokens=812, completion_tokens=40, reasoning_tokens=20)
    tally.turn_closed()


def measure(store: StateStore, turns: int, usage: bool = False) -> dict[str, float]:
    identities = [Identity(token=make_jwt(f"user-{n}"), label=f"account-{n}") for n in range(3)]
    pool = IdentityPool(identities, state=store)
    chats = ConversationStore(store, ttl=3600, capacity=1000, on_drop=lambda account, chat: None)
    book = Usage(store)
    metrics = Metrics(pool, book)
    turn = (lambda n: counted_turn(pool, chats, n, book, metrics)) if usage else (lambda n: one_turn(pool, chats, n))
    for n in range(200):  # warm
        turn(-n)
    wall, cpu = time.perf_counter(), time.process_time()
    for n in range(turns):
        turn(n)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"us_per_turn": wall / turns * 1e6, "cpu_us_per_turn": cpu / turns * 1e6}


def measure_admission(store: StateStore, turns: int) -> dict[str, float]:
    """µs per request for its admission place: ``incr`` +1/-1 (a plain counter) against ``hold`` +1/-1 (a share)."""
    for n in range(8):
        store.hold("bench:shares", f"{n:032x}", 3)
    figures = {}
    for name, take, give in (
        ("incr", lambda: store.incr("bench:plain"), lambda: store.incr("bench:plain", -1)),
        ("hold", lambda: store.hold("bench:shares", "f" * 32, 1), lambda: store.hold("bench:shares", "f" * 32, -1)),
    ):
        for _ in range(200):
            take(), give()
        wall = time.perf_counter()
        for _ in range(turns):
            take(), give()
        figures[f"{name}_us"] = (time.perf_counter() - wall) / turns * 1e6
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=5000)
    parser.add_argument("--usage", action="store_true", help="also time each store with usage and metrics")
    parser.add_argument("--admission", action="store_true", help="also time the admission count per request")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qwen2openai-bench-state-"))
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir",
                              str(tmp)], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        figures = {}
        for name, store in (("memory", MemoryStore()), ("sqlite", SqliteStore(str(tmp / "state.sqlite3"))),
                            ("redis", RedisStore(f"redis://127.0.0.1:{port}/0"))):
            figures[name] = measure(store, args.turns)
            print(f"{name:>7}: {figures[name]['us_per_turn']:7.1f} µs per turn, "
                  f"{figures[name]['cpu_us_per_turn']:7.1f} µs CPU")
            if args.usage:
                counted = figures[f"{name}+usage"] = measure(store, args.turns, usage=True)
                print(f"{name + '+usage':>13}: {counted['us_per_turn']:7.1f} µs per turn, "
                      f"{counted['cpu_us_per_turn']:7.1f} µs CPU "
                      f"(+{counted['us_per_turn'] - figures[name]['us_per_turn']:.1f} µs)")
            if args.admission:
                place = figures[f"{name}+admission"] = measure_admission(store, args.turns)
                print(f"{name + ' admission':>17}: incr {place['incr_us']:6.1f} µs, hold {place['hold_us']:6.1f} µs "
                      "per request (take and give back)")
            store.close()
        print(json.dumps(figures))
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
