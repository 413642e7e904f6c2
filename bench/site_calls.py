"""What one call to the site costs the worker: CPU per call of the client, against a bare HTTP client.

    python -m bench.site_calls [--calls 2000] [--events 20]

Starts the benchmark emulator on a loopback port (``bench.emulator --replay``, so the site's own work
is as small as it can be) and times, in this process, the three calls a one-turn request makes to the
site through ``QwenClient``: ``chats/new``, the completion (read to its end and decoded) and the
``DELETE`` of the chat. Beside each, the same request made with ``http.client`` and prebuilt bytes,
the least any client can spend: the difference is what our transport adds to every turn. The figures
are CPU microseconds per call (``time.process_time``), steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Callable

from config import load_settings
from identity_pool import Identity
from qwen_client.client import QwenClient
from tests.fake_qwen import make_jwt
from tests.helpers import free_port

TOKEN = make_jwt("bench-user")


def cpu_per_call(fn: Callable[[], object], calls: int) -> float:
    """Median of three rounds of ``calls`` calls, in CPU microseconds per call."""
    rounds = []
    for _ in range(3):
        start = time.process_time()
        for _ in range(calls):
            fn()
        rounds.append((time.process_time() - start) / calls * 1e6)
    return sorted(rounds)[1]


def start_emulator(events: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.emulator", "--port", str(port), "--replay", str(events)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/api/v2/models/")
            conn.getresponse().read()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the emulator did not start")


class Bare:
    """The floor: one kept-alive ``http.client`` connection and headers built once."""

    def __init__(self, base: str) -> None:
        self.conn = http.client.HTTPConnection(base.split("//")[1])
        self.headers = {"Cookie": f"token={TOKEN}", "Content-Type": "application/json", "source": "web"}

    def call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        self.conn.request(method, path, body=body, headers=self.headers)
        return self.conn.getresponse().read()


def measure(base: str, calls: int) -> dict[str, dict[str, float]]:
    client = QwenClient(load_settings({"CONFIG_FILE": "", "QWEN_BASE_URL": base}, environ={}))
    identity = Identity(cookie=f"token={TOKEN}", label="bench")
    # The WAF cookie the site sets on a first answer (§14) sits in the jar, as in real use.
    identity.session.cookies.set("acw_tc", "0" * 32, domain=base.split("//")[1].split(":")[0], path="/")
    chat_id = client.create_chat(identity, "qwen3.7-plus", "t2t")
    turn = {"stream": True, "chat_id": chat_id, "model": "qwen3.7-plus", "messages": [
        {"role": "user", "content": "Hi", "chat_type": "t2t", "feature_config": {"thinking_enabled": False}}]}
    bare = Bare(base)
    body = json.dumps(turn).encode()
    new_body = json.dumps({"models": ["qwen3.7-plus"], "chat_type": "t2t"}).encode()

    def read_turn() -> None:
        stream = client.stream_completion(identity, chat_id, turn)
        for _ in stream:
            pass

    ours = {
        "chats/new": cpu_per_call(lambda: client.create_chat(identity, "qwen3.7-plus", "t2t"), calls),
        "completion": cpu_per_call(read_turn, calls),
        "delete": cpu_per_call(lambda: client.delete_chat(identity, chat_id), calls),
    }
    floor = {
        "chats/new": cpu_per_call(lambda: bare.call("POST", "/api/v2/chats/new", new_body), calls),
        "completion": cpu_per_call(lambda: bare.call("POST", f"/api/v2/chat/completions?chat_id={chat_id}", body),
                                   calls),
        "delete": cpu_per_call(lambda: bare.call("DELETE", f"/api/v2/chats/{chat_id}"), calls),
    }
    return {"client": ours, "http.client": floor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20, help="events in each answer")
    args = parser.parse_args()
    proc, base = start_emulator(args.events)
    try:
        figures = measure(base, args.calls)
    finally:
        proc.kill()
    print(f"CPU µs per call, median of 3 rounds of {args.calls} ({args.events}-event answers)")
    print(f"{'call':<12}{'client':>10}{'http.client':>13}{'added':>9}")
    for name, value in figures["client"].items():
        floor = figures["http.client"][name]
        print(f"{name:<12}{value:>10.0f}{floor:>13.0f}{value - floor:>9.0f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
