"""The production setup under load: the proxy under gunicorn + gevent (one worker) against the emulator.

    python -m bench.serve [--quick] [--levels 1,50,500] [--hold 500,1000,2000,3000] [--relay-events 50000]
                          [--workers 1] [--state sqlite|memory|redis]
    python -m bench.serve --scale [--levels 1,50,500]   # 1, 2 and 4 workers, SQLite and Redis, vs direct
    python -m bench.serve ... --pin                      # the proxy on CPUs of its own (see below)

Starts the emulator (``bench.emulator``) and ``gunicorn -c gunicorn.conf.py app:app`` on loopback,
drives them from this process with gevent, and prints a table and one JSON line:

1. time to first content byte (TTFB) and total time of streamed turns, straight to the emulator
   (``chats/new`` then ``chat/completions``: the physical limit) and through the proxy, p50/p99, at
   1, 50 and 500 concurrent streams paced at 20 ms per chunk, and throughput (turns per second);
2. the most concurrent streams one worker holds with no error, and its memory per open stream
   (worker RSS while they are all open, minus RSS at rest, divided by their number);
3. relay rate: OpenAI chunks per second one worker passes from an unpaced upstream sending one
   character per event (``bench.emulator --replay``), every character checked, and the worker's CPU
   time per chunk (from /proc).

Nothing here is a test: figures vary with the machine's load (±30 % on a shared 2-core box);
compare medians of runs made one after another.

By default the emulator, this process's clients and the proxy share every CPU, so at 500 streams the
proxy's work is taken from the site's and the clients' (direct turns use the whole machine). In
production the site and the clients are elsewhere. ``--pin`` models that: the emulator, Redis and the
clients run on CPU 0 and the proxy's workers on the others, so direct and proxied turns see the same
site and clients and the proxy has CPUs of its own.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after patching, as gevent requires)
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.lock  # noqa: E402
from gevent.event import Event  # noqa: E402

from tests.fake_qwen import make_jwt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = make_jwt("bench-user")
KEY = "sk-bench-fake"
SITE_HEADERS = {"Cookie": f"token={TOKEN}", "version": "0.2.83", "Content-Type": "application/json", "source": "web",
                "Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin",
                "timezone": "Fri Sep 18 2026 12:30:00 GMT+0800", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
PROXY_HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
PACED = {"answer": "x" * 20, "chunk_chars": 1, "chunk_delay": 0.02, "split_writes": False}
# The first answer text of a turn: the site writes `"content": "x"`, the proxy `"content":"x"`.
FIRST_CONTENT = re.compile(rb'"content": ?"[^"]')
TICKS = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


class Services:
    """The emulator and gunicorn as child processes, stopped on exit."""

    def __init__(self, log_dir: Path, pin: bool = False) -> None:
        self.log_dir, self.processes = log_dir, []
        #: With ``--pin``: CPU 0 for the site's side (emulator, Redis, clients), the rest for the proxy.
        cpus = sorted(os.sched_getaffinity(0))
        self.site_cpus, self.proxy_cpus = ({cpus[0]}, set(cpus[1:])) if pin else (None, None)

    def start(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None,
              cpus: set[int] | None = None) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("wb")
        cpus = cpus or self.site_cpus
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=pin)
        self.processes.append(process)
        _wait_port(port, process)
        return process

    def emulator(self, port: int, replay: int | None = None) -> subprocess.Popen:
        argv = [sys.executable, "-m", "bench.emulator", "--port", str(port)]
        return self.start(f"emulator-{port}", argv + (["--replay", str(replay)] if replay else []), port)

    def redis(self) -> str:
        """A redis-server on a free loopback port, saving nothing; its URL."""
        port = _free_port()
        self.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--dir", str(self.log_dir)], port)
        return f"redis://127.0.0.1:{port}/0"

    def proxy(self, port: int, upstream: int, workers: int = 1, state: dict[str, str] | None = None) -> int:
        """gunicorn with the production config; returns its (first) worker's pid."""
        state = {"STATE_FILE": str(self.log_dir / f"state-{port}.sqlite3")} if state is None else state
        env = {"CONFIG_FILE": "", "COOKIE_FILE": "", "TOKEN_STORE_FILE": "", "QWEN_TOKEN": TOKEN, "API_KEY": KEY,
               "HOST": "127.0.0.1",
               "PORT": str(port), "QWEN_BASE_URL": f"http://127.0.0.1:{upstream}", "MAX_CONCURRENT_REQUESTS": "5000",
               "WEB_CONCURRENCY": str(workers), **state}
        master = self.start(f"gunicorn-{port}", [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
                            port, env, self.proxy_cpus)
        children = Path(f"/proc/{master.pid}/task/{master.pid}/children")
        deadline = time.monotonic() + 30
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        return int(children.read_text().split()[0])

    def stop_one(self, process: subprocess.Popen) -> None:
        process.terminate()
        process.wait(timeout=30)
        self.processes.remove(process)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# ----------------------------------------------------------------- client


def _post(port: int, path: str, body: dict, headers: dict[str, str]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", path, json.dumps(body), headers)
    return conn, conn.getresponse()


@dataclass
class Sample:
    ttfb: float
    total: float
    ok: bool
    body: bytes = b""


def _read_stream(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, start: float,
                 keep: bool = False, opened: Event | None = None) -> Sample:
    """Read a streamed answer to its end; the time of its first answer text is its TTFB."""
    first, parts, tail = None, [], b""
    while data := resp.read1(65536):
        parts.append(data)
        if first is None and FIRST_CONTENT.search(tail + data):
            first = time.perf_counter()
            if opened is not None:
                opened.set()
        tail = data[-32:]
    end = time.perf_counter()
    conn.close()
    body = b"".join(parts)
    ok = resp.status == 200 and first is not None and b'"error"' not in body
    return Sample((first or end) - start, end - start, ok, body if keep else b"")


def direct(port: int) -> Sample:
    """A turn straight to the site: create the chat, then stream the completion."""
    start = time.perf_counter()
    conn, resp = _post(port, "/api/v2/chats/new", {"models": ["qwen3.7-plus"]}, SITE_HEADERS)
    chat_id = json.loads(resp.read())["data"]["id"]
    conn.close()
    message = {"role": "user", "content": "hi", "feature_config": {"output_schema": "phase", "thinking_enabled": False}}
    turn = {"stream": True, "chat_id": chat_id, "model": "qwen3.7-plus", "messages": [message]}
    conn, resp = _post(port, f"/api/v2/chat/completions?chat_id={chat_id}", turn, SITE_HEADERS)
    sample = _read_stream(conn, resp, start)
    sample.ok = sample.ok and b'"status": "finished"' in sample.body if sample.body else sample.ok
    return sample


def proxied(port: int, keep: bool = False, opened: Event | None = None) -> Sample:
    start = time.perf_counter()
    body = {"model": "qwen3.7-plus-fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    conn, resp = _post(port, "/v1/chat/completions", body, PROXY_HEADERS)
    sample = _read_stream(conn, resp, start, keep=True, opened=opened)
    sample.ok = sample.ok and sample.body.endswith(b"data: [DONE]\n\n")
    if not keep:
        sample.body = b""
    return sample


def configure(port: int, **fields) -> None:
    conn, resp = _post(port, "/__fake__/scenario", fields, {"Content-Type": "application/json"})
    resp.read()
    conn.close()


def run_level(turn, concurrency: int, total: int) -> tuple[list[Sample], float]:
    """``total`` turns by ``concurrency`` clients at once; the samples and the wall time."""
    samples: list[Sample] = []
    remaining = [total]

    def client() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            try:
                samples.append(turn())
            except OSError:
                samples.append(Sample(0.0, 0.0, False))

    start = time.perf_counter()
    gevent.joinall([gevent.spawn(client) for _ in range(concurrency)])
    return samples, time.perf_counter() - start


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def _summary(samples: list[Sample], wall: float) -> dict[str, float]:
    good = [s for s in samples if s.ok]
    return {"ttfb_p50_ms": _pct([s.ttfb for s in good], 0.5), "ttfb_p99_ms": _pct([s.ttfb for s in good], 0.99),
            "total_p50_ms": _pct([s.total for s in good], 0.5), "total_p99_ms": _pct([s.total for s in good], 0.99),
            "turns_per_s": len(good) / wall, "errors": len(samples) - len(good)}


# ----------------------------------------------------------------- the three measurements


def latency(emulator: int, proxy: int, levels: list[int], turns: dict[int, int], rounds: int) -> dict[str, dict]:
    """Direct vs proxied at each concurrency, alternating rounds so both see the same machine load."""
    configure(emulator, **PACED)
    results: dict[str, dict] = {}
    for level in levels:
        pooled = {"direct": ([], 0.0), "proxy": ([], 0.0)}
        for _ in range(rounds):
            for name, turn in (("direct", lambda: direct(emulator)), ("proxy", lambda: proxied(proxy))):
                samples, wall = run_level(turn, level, turns[level])
                pooled[name] = (pooled[name][0] + samples, pooled[name][1] + wall)
        row = {name: _summary(*value) for name, value in pooled.items()}
        row["added_ttfb_p50_ms"] = row["proxy"]["ttfb_p50_ms"] - row["direct"]["ttfb_p50_ms"]
        row["added_ttfb_p99_ms"] = row["proxy"]["ttfb_p99_ms"] - row["direct"]["ttfb_p99_ms"]
        row["throughput_vs_direct"] = row["proxy"]["turns_per_s"] / row["direct"]["turns_per_s"]
        results[str(level)] = row
        print(f"  {level} concurrent: added TTFB p50 {row['added_ttfb_p50_ms']:.2f} ms, "
              f"p99 {row['added_ttfb_p99_ms']:.2f} ms, throughput {row['throughput_vs_direct']:.2f}x direct",
              file=sys.stderr)
    return results


def hold(emulator: int, proxy: int, worker: int, levels: list[int]) -> dict[str, object]:
    """Open N streams at once through one worker, measure its memory while all are open, check every one."""
    # Each stream lasts about 40 s (20 one-character events, 2 s apart), longer than opening them all.
    configure(emulator, answer="y" * 20, chunk_chars=1, chunk_delay=2.0, split_writes=False)
    run_level(lambda: proxied(proxy), 20, 20)  # warm: connections, caches, greenlet pools
    gevent.sleep(1)
    rest = _rss_kb(worker)
    rows, most = [], 0
    for count in levels:
        opened = [Event() for _ in range(count)]
        gate = gevent.lock.Semaphore(200)  # at most this many connecting at once: a burst, not a SYN flood

        def one(event: Event) -> Sample:
            with gate:
                task = gevent.spawn(proxied, proxy, False, event)
                event.wait(timeout=120)
            return task.get()

        tasks = [gevent.spawn(one, event) for event in opened]
        deadline = time.monotonic() + 120
        while not all(e.is_set() for e in opened) and time.monotonic() < deadline and not all(t.ready() for t in tasks):
            gevent.sleep(0.1)
        all_open = all(e.is_set() for e in opened)
        rss = _rss_kb(worker)
        samples = [t.get() for t in tasks]
        errors = sum(not s.ok for s in samples) + (not all_open)
        per_stream_kb = (rss - rest) / count
        rows.append({"streams": count, "errors": errors, "worker_rss_mb": rss / 1024, "kb_per_stream": per_stream_kb})
        print(f"  {count} streams held: {errors} errors, worker RSS {rss / 1024:.0f} MB, "
              f"{per_stream_kb:.1f} KB per open stream", file=sys.stderr)
        if errors:
            break
        most = count
    return {"most_streams_without_error": most, "rest_rss_mb": rest / 1024, "levels": rows}


def relay(proxy: int, worker: int, events: int, rounds: int) -> dict[str, float]:
    """One stream at a time from an upstream that sends as fast as the socket takes it."""
    expected = "".join(chr(0x61 + i % 26) for i in range(events))
    proxied(proxy)  # warm
    runs = []
    for _ in range(rounds):
        cpu = _cpu_seconds(worker)
        sample = proxied(proxy, keep=True)
        cpu = _cpu_seconds(worker) - cpu
        payloads = [json.loads(e[6:]) for e in sample.body.split(b"\n\n") if e.startswith(b"data: {")]
        text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices"))
        chunks = len(payloads)
        elapsed = sample.total - sample.ttfb
        runs.append({"chunks_per_s": chunks / elapsed, "cpu_us_per_chunk": cpu / chunks * 1e6,
                     "all_characters": text == expected, "chunks": chunks})
        print(f"  relay: {chunks / elapsed:.0f} chunks/s, {cpu / chunks * 1e6:.1f} µs CPU per chunk, "
              f"all characters: {text == expected}", file=sys.stderr)
    best = sorted(runs, key=lambda r: r["chunks_per_s"])[len(runs) // 2]
    return {**best, "runs": runs}


# ----------------------------------------------------------------- report


def report(figures: dict) -> None:
    print(f"\n{'concurrent':>10} {'':7} {'TTFB p50':>9} {'TTFB p99':>9} {'total p50':>10} {'total p99':>10} {'turns/s':>8}")
    for level, row in figures["latency"].items():
        for name in ("direct", "proxy"):
            f = row[name]
            print(f"{level:>10} {name:7} {f['ttfb_p50_ms']:8.2f}ms {f['ttfb_p99_ms']:8.2f}ms {f['total_p50_ms']:9.1f}ms "
                  f"{f['total_p99_ms']:9.1f}ms {f['turns_per_s']:8.1f}" + (f"  ({f['errors']} errors)" if f["errors"] else ""))
        print(f"{'':10} added   {row['added_ttfb_p50_ms']:8.2f}ms {row['added_ttfb_p99_ms']:8.2f}ms"
              f"{'':22}{row['throughput_vs_direct']:7.2f}x")
    held = figures["hold"]
    print(f"\nstreams one worker holds without error: {held['most_streams_without_error']} "
          f"(worker at rest {held['rest_rss_mb']:.0f} MB)")
    for row in held["levels"]:
        print(f"{row['streams']:>10} streams: {row['errors']} errors, RSS {row['worker_rss_mb']:.0f} MB, "
              f"{row['kb_per_stream']:.1f} KB per open stream")
    print(f"\nmachine load average (1 min): {figures['load_average_at_start']:.2f} at start, "
          f"{figures['load_average_at_end']:.2f} at end, on {os.cpu_count()} cores")
    r = figures["relay"]
    print(f"\nrelay, unpaced one-character events: {r['chunks_per_s']:.0f} chunks/s, {r['cpu_us_per_chunk']:.1f} µs "
          f"worker CPU per chunk (= {1e6 / r['cpu_us_per_chunk']:.0f} chunks/s of CPU), "
          f"every character delivered: {r['all_characters']}")
    print(json.dumps(figures, separators=(",", ":")))


def scale(services: Services, emulator: int, levels: list[int], turns: dict[int, int], rounds: int,
          states: tuple[str, ...] = ("sqlite", "redis")) -> list[dict]:
    """Latency and throughput of 1, 2 and 4 workers with SQLite and with Redis, each against direct."""
    redis_url, rows = services.redis(), []
    for state in states:
        for workers in (1, 2, 4):
            port = _free_port()
            env = {"REDIS_URL": redis_url} if state == "redis" else None
            services.proxy(port, emulator, workers, env)
            process = services.processes[-1]
            gevent.sleep(2 + workers)  # every worker booted, not only the first
            print(f"{workers} worker(s), {state}:", file=sys.stderr)
            for level, row in latency(emulator, port, levels, turns, rounds).items():
                rows.append({"workers": workers, "state": state, "concurrent": int(level), **row})
            services.stop_one(process)
    print(f"\n{'workers':>7} {'state':>6} {'concurrent':>10} {'added TTFB p50':>15} {'p99':>10} "
          f"{'proxy turns/s':>14} {'direct':>8} {'vs direct':>9}")
    for r in rows:
        print(f"{r['workers']:>7} {r['state']:>6} {r['concurrent']:>10} {r['added_ttfb_p50_ms']:13.2f}ms "
              f"{r['added_ttfb_p99_ms']:8.2f}ms {r['proxy']['turns_per_s']:14.1f} {r['direct']['turns_per_s']:8.1f} "
              f"{r['throughput_vs_direct']:8.2f}x")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns and levels: a smoke run")
    parser.add_argument("--levels", default="1,50,500")
    parser.add_argument("--hold", default="500,1000,2000,3000")
    parser.add_argument("--relay-events", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating direct/proxy rounds per level")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument("--scale", action="store_true", help="only latency, for 1, 2 and 4 workers × SQLite, Redis")
    parser.add_argument("--scale-states", default="sqlite,redis", help="with --scale: the stores to run")
    parser.add_argument("--pin", action="store_true", help="the proxy on CPUs of its own, the rest on CPU 0")
    parser.add_argument("--state", choices=("sqlite", "memory", "redis"), default="sqlite",
                        help="the shared state: the default SQLite file, per-process memory, or a redis-server")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    hold_levels = [int(x) for x in args.hold.split(",")]
    turns = {level: max(60, 2 * level) for level in levels}
    if args.quick:
        turns, hold_levels, args.rounds = {level: max(20, level) for level in levels}, hold_levels[:1], 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it: each stream is 4 sockets here

    load_at_start = os.getloadavg()[0]  # other work on the machine shifts every figure: report it
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        parser.error("--pin needs at least 2 CPUs")
    services = Services(Path(tempfile.mkdtemp(prefix="qwen2openai-bench-")), pin=args.pin)
    if args.pin:  # the clients are the site's side too
        os.sched_setaffinity(0, services.site_cpus)
    try:
        emulator, proxy, replay, relay_proxy = (_free_port() for _ in range(4))
        services.emulator(emulator)
        if args.scale:
            rows = scale(services, emulator, levels, turns, args.rounds, tuple(args.scale_states.split(",")))
            print(json.dumps({"scale": rows, "pinned": args.pin, "load_average_at_start": load_at_start,
                              "load_average_at_end": os.getloadavg()[0]}, separators=(",", ":")))
            return
        state = None  # the default: a SQLite file
        if args.state == "memory":
            state = {"STATE_FILE": ""}
        elif args.state == "redis":
            state = {"REDIS_URL": services.redis()}
        worker = services.proxy(proxy, emulator, args.workers, state)
        services.emulator(replay, replay=args.relay_events)
        relay_worker = services.proxy(relay_proxy, replay)
        print(f"emulator :{emulator}, proxy :{proxy} (worker {worker}); logs in {services.log_dir}", file=sys.stderr)
        figures = {
            "latency": latency(emulator, proxy, levels, turns, args.rounds),
            "hold": hold(emulator, proxy, worker, hold_levels),
            "relay": relay(relay_proxy, relay_worker, args.relay_events, max(3, args.rounds)),
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()[0],
            "workers": args.workers, "state": args.state, "pinned": args.pin,
        }
    finally:
        services.stop()
    report(figures)


if __name__ == "__main__":
    main()
