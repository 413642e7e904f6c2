"""Measure what media input adds to a turn, against the emulator's site and OSS on loopback.

    python -m bench.uploads [--requests 20] [--kib 1024] [--latency 0.1]

Prints a table and one JSON line: time to the first content byte of a streamed
turn p50/p99 for text only, one fresh inline image (decode + getstsToken + signed
PUT), the same image again (reused upload), and five fresh images; and the CPU
cost of one OSS V4 signature. Loopback hides network latency: ``--latency`` makes
the emulator add that many seconds to every grant and PUT, like a real round trip;
the five uploads of one turn then overlap instead of adding up.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import statistics
import threading
import time

import requests
from werkzeug.serving import make_server

from app import create_app
from config import load_settings
from qwen_client import oss
from tests.fake_qwen import FakeQwenServer, make_jwt

KEY = "sk-bench-fake"


def _serve(app) -> tuple[str, object]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def _png(size: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + os.urandom(size)


def _first_byte(base: str, images: list[bytes]) -> float:
    parts = [{"type": "text", "text": "what is this?"}]
    parts += [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(i).decode()}}
              for i in images]
    body = {"model": "qwen3.7-plus-fast", "stream": True, "messages": [{"role": "user", "content": parts}]}
    start = time.perf_counter()
    with requests.post(base + "/v1/chat/completions", json=body, stream=True,
                       headers={"Authorization": f"Bearer {KEY}"}) as resp:
        resp.raise_for_status()
        first = None
        for chunk in resp.iter_content(chunk_size=None):
            if first is None and b'"content"' in chunk:
                first = time.perf_counter()
        return (first or time.perf_counter()) - start


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _sign_cost(n: int = 20000) -> float:
    creds = oss.Credentials("STS.bench", "secret", "token")
    now = dt.datetime.now(dt.timezone.utc)
    start = time.perf_counter()
    for i in range(n):
        oss.sign_headers("PUT", "qwen-webui-prod", f"u/{i}_a.png", {"Content-Type": "image/png"}, creds,
                         "oss-ap-southeast-1", now)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--kib", type=int, default=1024, help="size of each image")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each grant and PUT")
    args = parser.parse_args()
    size = args.kib * 1024
    with FakeQwenServer() as fake:
        fake.fake.configure(sts_limit=None, chunk_chars=40, upload_latency=args.latency)
        settings = load_settings({"CONFIG_FILE": "", "COOKIE_FILE": "", "QWEN_BASE_URL": fake.base_url,
                                  "QWEN_OSS_ENDPOINT": fake.base_url, "API_KEY": KEY, "MAX_REQUEST_MB": 64,
                                  "COOKIE": f"token={make_jwt('bench-user')}"}, environ={})
        base, server = _serve(create_app(settings))
        same = _png(size)
        cases = {
            "text only": lambda: [],
            "1 fresh image": lambda: [_png(size)],
            "1 image, reused upload": lambda: [same],
            "5 fresh images": lambda: [_png(size) for _ in range(5)],
        }
        _first_byte(base, [same])  # warm up, and put `same` in the upload cache
        results = {}
        for name, images in cases.items():
            times = [_first_byte(base, images()) for _ in range(args.requests)]
            results[name] = {"p50_ms": round(_pct(times, 0.5), 1), "p99_ms": round(_pct(times, 0.99), 1),
                             "mean_ms": round(statistics.mean(times) * 1000, 1)}
        server.shutdown()
    sign_us = _sign_cost()
    print(f"first content byte, {args.requests} sequential streamed turns, images of {args.kib} KiB, "
          f"{args.latency * 1000:g} ms per grant and PUT")
    print(f"{'case':<26}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in results.items():
        print(f"{name:<26}{r['p50_ms']:>10}{r['p99_ms']:>10}")
    print(f"OSS V4 signature: {sign_us:.1f} µs")
    print(json.dumps({"first_byte": results, "kib": args.kib, "latency_s": args.latency, "sign_us": round(sign_us, 1)}))


if __name__ == "__main__":
    main()
