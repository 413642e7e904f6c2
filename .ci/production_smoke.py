"""CI: the production path on its own, as a fresh machine runs it.

    python .ci/production_smoke.py --gunicorn /path/to/venv/bin/gunicorn

``--gunicorn`` belongs to a venv built from ``requirements.txt`` alone. This script
(run by the test venv's Python, which has the emulator's packages) starts the
emulator of the site and the documented production command
``gunicorn -c gunicorn.conf.py app:app`` on loopback ports, then checks that
``/health`` answers and that a chat is relayed, plain and streamed. Anything else
fails loudly with the server's log. Whatever it started, it stops.

Standard library only, so it proves nothing about the test requirements.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-ci-smoke-fake-key"
ANSWER = "Relayed by the production command."
# No environment proxy may see loopback traffic.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SmokeFailure(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url: str, body: dict | None = None, timeout: float = 20) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={
        "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with OPENER.open(request, timeout=timeout) as response:
        return response.status, response.read()


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SmokeFailure(f"{process.args[0]} exited with {process.returncode}:\n{tail(log)}")
        try:
            if call(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SmokeFailure(f"{url} did not answer within {timeout:g} s:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def stop(process: subprocess.Popen) -> None:
    """SIGINT: a quick stop for both (gunicorn's TERM would wait for open streams)."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fake_jwt() -> str:
    """A token shaped like the site's (the emulator checks the shape, not the signature)."""
    import base64

    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    exp = int(time.time()) + 86400
    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64({'id': 'ci-smoke', 'exp': exp})}.ZmFrZQ"


def check_relay(base: str) -> None:
    status, body = call(base + "/health")
    health = json.loads(body)
    if status != 200 or "accounts" not in health:
        raise SmokeFailure(f"/health answered {status}: {body[:500]!r}")
    chat = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
    status, body = call(base + "/v1/chat/completions", chat)
    content = json.loads(body)["choices"][0]["message"]["content"]
    if status != 200 or content != ANSWER:
        raise SmokeFailure(f"non-stream chat answered {status}: {body[:500]!r}")
    status, body = call(base + "/v1/chat/completions", {**chat, "stream": True})
    events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                   if json.loads(e).get("choices"))
    if status != 200 or events[-1:] != ["[DONE]"] or text != ANSWER:
        raise SmokeFailure(f"streamed chat answered {status}: {body[:800]!r}")


def run(gunicorn: str, logs: Path) -> None:
    site_port, app_port = free_port(), free_port()
    site = f"http://127.0.0.1:{site_port}"
    site_log, app_log = logs / "emulator.log", logs / "gunicorn.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOST": "127.0.0.1", "PORT": str(app_port),
           "CONFIG_FILE": "", "COOKIE_FILE": "", "COOKIE": f"token={fake_jwt()}", "API_KEY": API_KEY,
           "QWEN_BASE_URL": site, "QWEN_AUTH_URL": site, "QWEN_OSS_ENDPOINT": site, "TOKEN_STORE_FILE": "",
           "NO_PROXY": "127.0.0.1,localhost"}
    started: list[subprocess.Popen] = []
    try:
        with site_log.open("wb") as out:
            started.append(subprocess.Popen(
                [sys.executable, "-m", "tests.fake_qwen", "--port", str(site_port), "--answer", ANSWER],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
        wait_until_up(site + "/__fake__/requests", started[0], site_log)
        with app_log.open("wb") as out:  # the documented command, from the production venv
            started.append(subprocess.Popen([gunicorn, "-c", "gunicorn.conf.py", "app:app"],
                                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        wait_until_up(f"http://127.0.0.1:{app_port}/health", started[1], app_log)
        try:
            check_relay(f"http://127.0.0.1:{app_port}")
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise SmokeFailure(f"chat relay failed ({type(exc).__name__}: {exc}):\n{tail(app_log)}") from exc
        if b"Using worker: gevent" not in app_log.read_bytes():
            raise SmokeFailure(f"gunicorn did not run the gevent worker:\n{tail(app_log)}")
    finally:
        for process in reversed(started):
            stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gunicorn", required=True, help="gunicorn of a venv built from requirements.txt alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        try:
            run(args.gunicorn, Path(logs))
        except SmokeFailure as exc:
            print(f"PRODUCTION SMOKE TEST FAILED: {exc}", file=sys.stderr)
            return 1
    print("production smoke test: gunicorn from requirements.txt alone answers /health and relays chats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
