"""Measure what the proxy adds over talking to the site directly, against the emulator on loopback.

    python -m bench.relay [--requests 50] [--chars 20000]

Prints a table and one JSON line:
- time to first content byte and total time, direct (the emulator's own protocol) vs through the proxy,
  p50/p99 over sequential streamed requests paced at 20 ms per chunk;
- relay rate: chunks per second the proxy passes through from an unpaced upstream sending one
  character per event, and whether every character arrived.

This runs the proxy on Werkzeug's threaded server (``python app.py``); ``python -m bench.serve``
measures the production setup (gunicorn + gevent).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import requests
from werkzeug.serving import make_server

from app import create_app
from config import load_settings
from qwen_client.wire import SSEDecoder
from tests.fake_qwen import FakeQwenServer, make_jwt

TOKEN = make_jwt("bench-user")
KEY = "sk-bench-fake"


def _serve(app) -> tuple[str, object]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def _first_and_total(resp: requests.Response, is_content, start: float) -> tuple[float, float, list[dict]]:
    """Seconds from ``start`` to the first content event and to the end of the body."""
    first, events, decoder = None, [], SSEDecoder()
    for chunk in resp.iter_content(chunk_size=None):
        for data in decoder.feed(chunk):
            if data.strip() == b"[DONE]":
                continue
            event = json.loads(data)
            events.append(event)
            if first is None and is_content(event):
                first = time.perf_counter()
    end = time.perf_counter()
    return (first or end) - start, end - start, events


def direct(base: str) -> tuple[float, float]:
    headers = {"Cookie": f"token={TOKEN}", "version": "0.2.83", "Content-Type": "application/json", "source": "web",
               "Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin",
               "timezone": "Fri Sep 18 2026 12:30:00 GMT+0800", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
    start = time.perf_counter()
    chat = requests.post(base + "/api/v2/chats/new", json={"models": ["qwen3.7-plus"]}, headers=headers).json()
    chat_id = chat["data"]["id"]
    message = {"role": "user", "content": "hi", "feature_config": {"output_schema": "phase", "thinking_enabled": False}}
    body = {"stream": True, "chat_id": chat_id, "model": "qwen3.7-plus", "messages": [message]}
    resp = requests.post(f"{base}/api/v2/chat/completions?chat_id={chat_id}", json=body, headers=headers, stream=True)
    first, total, _ = _first_and_total(resp, lambda e: bool(e.get("choices")), start)
    return first, total


def proxied(base: str) -> tuple[float, float, list[dict]]:
    body = {"model": "qwen3.7-plus-fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    start = time.perf_counter()
    resp = requests.post(base + "/v1/chat/completions", json=body, stream=True,
                         headers={"Authorization": f"Bearer {KEY}"})
    return _first_and_total(
        resp, lambda e: bool(e.get("choices") and e["choices"][0]["delta"].get("content")), start)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--chars", type=int, default=20000)
    args = parser.parse_args()
    with FakeQwenServer() as upstream:
        settings = load_settings({"CONFIG_FILE": "", "COOKIE_FILE": "", "QWEN_BASE_URL": upstream.base_url,
                                  "QWEN_TOKEN": TOKEN, "API_KEY": KEY}, environ={})
        base, server = _serve(create_app(settings))
        fake = upstream.fake
        fake.configure(answer="x" * 20, chunk_chars=1, chunk_delay=0.02)
        proxied(base)  # warm the model cache and connections
        rows = {"direct": [direct(upstream.base_url) for _ in range(args.requests)],
                "proxy": [proxied(base)[:2] for _ in range(args.requests)]}
        fake.configure(answer="".join(chr(0x61 + i % 26) for i in range(args.chars)), chunk_chars=1, chunk_delay=0,
                       split_writes=False)
        _, elapsed, events = proxied(base)
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
        server.shutdown()

    figures = {}
    for name, samples in rows.items():
        firsts, totals = [s[0] for s in samples], [s[1] for s in samples]
        figures[name] = {"ttfb_p50_ms": _pct(firsts, 0.5), "ttfb_p99_ms": _pct(firsts, 0.99),
                         "total_p50_ms": _pct(totals, 0.5), "total_mean_ms": statistics.mean(totals) * 1000}
    figures["added_ttfb_p50_ms"] = figures["proxy"]["ttfb_p50_ms"] - figures["direct"]["ttfb_p50_ms"]
    figures["added_ttfb_p99_ms"] = figures["proxy"]["ttfb_p99_ms"] - figures["direct"]["ttfb_p99_ms"]
    figures["relay_chunks_per_s"] = len(events) / elapsed
    figures["relay_all_characters"] = text == fake.scenario.answer
    print(f"{'':8} {'ttfb p50':>10} {'ttfb p99':>10} {'total p50':>10}   ({args.requests} sequential streams, 20 ms/chunk)")
    for name in ("direct", "proxy"):
        f = figures[name]
        print(f"{name:8} {f['ttfb_p50_ms']:9.2f}ms {f['ttfb_p99_ms']:9.2f}ms {f['total_p50_ms']:9.2f}ms")
    print(f"added to first byte: p50 {figures['added_ttfb_p50_ms']:.2f} ms, p99 {figures['added_ttfb_p99_ms']:.2f} ms")
    print(f"relay: {figures['relay_chunks_per_s']:.0f} chunks/s over {len(events)} one-character chunks, "
          f"all characters delivered: {figures['relay_all_characters']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
