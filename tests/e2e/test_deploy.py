"""The production stack end to end: nginx (deploy/nginx.conf) → gunicorn + gevent (gunicorn.conf.py) → app → emulator.

Everything runs on loopback ports with files in a temporary directory. nginx comes from Debian's
packages (``.ci/run`` installs it); without it the module is skipped locally and fails in CI.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from tests.helpers import API_KEY, COOKIE
from tests.fake_qwen import FakeQwenServer

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MESSAGES = [{"role": "user", "content": "hi"}]
PING_INTERVAL = 0.3


def _nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("nginx is not installed; .ci/run must install it (apt-get install nginx)")
    pytest.skip("nginx is not installed (apt-get install nginx); CI runs these tests")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Poll ``url`` until it answers; fail with the process's log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def nginx_config(tmp: Path, listen: int, upstream: int) -> Path:
    """The shipped server block on test ports, inside a minimal main config whose files all live in ``tmp``."""
    block = (ROOT / "deploy" / "nginx.conf").read_text()
    rendered = block.replace("listen 80;", f"listen 127.0.0.1:{listen};").replace(
        "server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};")
    assert rendered.count(str(listen)) == 1 and rendered.count(str(upstream)) == 1, "deploy/nginx.conf changed shape"
    (tmp / "qwen2openai.conf").write_text(rendered)
    # As root, workers drop to nobody (as in production) and nginx hands them its temp directories.
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    temp_paths = "\n".join(f"    {name}_temp_path {tmp}/{name};" for name in
                           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = tmp / "nginx.conf"
    main.write_text(f"""{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/access.log;
{temp_paths}
    include {tmp}/qwen2openai.conf;
}}
""")
    return main


class Stack:
    """nginx → gunicorn (gevent) → app, against the session's emulator."""

    def __init__(self, upstream: FakeQwenServer, tmp: Path, **settings: str) -> None:
        self.tmp, self.app_port, self.port = tmp, _free_port(), _free_port()
        self.url, self.app_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.app_port}"
        self.app_log = tmp / "gunicorn.log"
        env = {**os.environ, "CONFIG_FILE": "", "COOKIE_FILE": "", "QWEN_BASE_URL": upstream.base_url,
               "COOKIE": COOKIE, "API_KEY": API_KEY, "HOST": "127.0.0.1", "PORT": str(self.app_port),
               "READ_TIMEOUT": "10", "PING_INTERVAL_SECONDS": str(PING_INTERVAL), "TOKEN_STORE_FILE": "",
               "STATE_FILE": str(tmp / "state.sqlite3"), "QWEN_AUTH_URL": upstream.base_url,
               "QWEN_OSS_ENDPOINT": upstream.base_url,
               # A long message goes inline, so the 5 MB test sees all of it reach the site's completions call.
               "OFFLOAD_CONTEXT": "false", "MAX_TURN_BYTES": "10000000", **settings}
        # The documented production command, run by this interpreter.
        with self.app_log.open("wb") as log:
            self.gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
                                             cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        config = nginx_config(tmp, self.port, self.app_port)
        self.nginx_log = tmp / "nginx.out"
        with self.nginx_log.open("wb") as log:
            self.nginx = subprocess.Popen([_nginx(), "-p", str(tmp), "-c", str(config), "-e", str(tmp / "error.log"),
                                           "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT)

    def start(self) -> Stack:
        _wait_until_up(self.app_url + "/health", self.gunicorn, self.app_log)
        _wait_until_up(self.url + "/health", self.nginx, self.nginx_log)
        return self

    def stop(self) -> None:
        _stop(self.nginx, signal.SIGQUIT)  # nginx: graceful
        _stop(self.gunicorn, signal.SIGINT)  # gunicorn: quick (TERM would wait for streams)

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def stack(fake_server: FakeQwenServer) -> Iterator[Stack]:
    _nginx()
    tmp = Path(tempfile.mkdtemp(prefix="qwen2openai-nginx-"))
    tmp.chmod(0o755)  # nginx's workers (nobody, when run as root) read and write below it
    started = Stack(fake_server, tmp)
    try:
        yield started.start()
    finally:
        started.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _open(url: str) -> tuple[requests.Response, Iterator[bytes]]:
    resp = requests.post(url + "/v1/chat/completions", stream=True, timeout=20, headers=AUTH,
                         json={"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True})
    return resp, resp.iter_content(chunk_size=None)


def _read_until(chunks: Iterator[bytes], marker: bytes, seen: bytes = b"") -> bytes:
    while marker not in seen:
        seen += next(chunks)
    return seen


def _content(body: bytes) -> str:
    payloads = [json.loads(e[6:]) for e in body.decode().split("\n\n") if e.startswith("data: {")]
    return "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices"))


def test_stream_chunks_pass_nginx_as_the_site_sends_them(stack, fake):
    # The site sends two deltas and then holds the rest: what the client reads meanwhile was not buffered.
    fake.configure(answer="abcdefgh", chunk_chars=2, stall_after_events=3)
    resp, chunks = _open(stack.url)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Encoding" not in resp.headers, "an event stream is never compressed"
    body = _read_until(chunks, b'"cd"')
    assert _content(body) == "abcd" and fake.stalled_streams == 1, "the first chunks arrive before the last is sent"
    body = _read_until(chunks, b": ping\n\n", body)  # and keep-alives pass while the site is silent
    fake.release_stalls()
    body += b"".join(chunks)
    assert body.endswith(b"data: [DONE]\n\n") and _content(body) == "abcd"


def test_sdk_through_the_whole_stack(stack, fake):
    fake.configure(answer="Through nginx and gunicorn.", chunk_chars=3)
    stream = stack.client().chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Through nginx and gunicorn."
    models = requests.get(stack.url + "/v1/models", headers={**AUTH, "Accept-Encoding": "gzip"}, timeout=10)
    assert models.headers.get("Content-Encoding") == "gzip" and models.json()["data"], "JSON may be compressed"


def test_a_5_mb_request_passes(stack, fake):
    fake.configure(x5sec_body_bytes=None, answer="Read it all.")  # the real site refuses long bodies; not our concern here
    text = "word " * 1_000_000
    reply = stack.client().chat.completions.create(model="qwen3.7-plus", messages=[{"role": "user", "content": text}])
    assert reply.choices[0].message.content == "Read it all."
    assert len(fake.requests_to("/api/v2/chat/completions")[-1].body) > 5_000_000


def test_client_hang_up_reaches_the_site(stack, fake):
    assert fake.wait_streams_closed(timeout=5), "streams of earlier tests must have ended"
    fake.configure(answer="x" * 3000, chunk_chars=1, chunk_delay=0.02)  # a minute of streaming
    resp, chunks = _open(stack.url)
    assert next(chunks).startswith(b"data: ")
    assert fake.open_streams == 1
    resp.close()
    assert fake.wait_streams_closed(timeout=5), "the hang-up went through nginx, gunicorn and the app to the site"


def test_a_hang_up_while_the_site_is_silent_reaches_it_within_two_seconds_under_gevent(fake_server, fake, tmp_path):
    """Default 15 s pings, so only the proxy's look at its client's socket can notice in time (gevent, nginx)."""
    tmp_path.chmod(0o755)
    quiet = Stack(fake_server, tmp_path, PING_INTERVAL_SECONDS="15").start()
    try:
        for url in (quiet.url, quiet.app_url):  # through nginx, and gunicorn alone
            assert fake.wait_streams_closed(timeout=5), "streams of earlier tests must have ended"
            fake.configure(answer="ab", chunk_chars=1, chunk_delay=30.0)  # "a", then 30 s of silence
            resp, chunks = _open(url)
            _read_until(chunks, b'"a"')
            assert fake.open_streams == 1
            resp.close()
            gave_up = time.monotonic()
            assert fake.wait_streams_closed(timeout=3), f"{url}: the site still streams to a client that left"
            assert time.monotonic() - gave_up < 2.5
    finally:
        quiet.stop()


def test_access_log_keeps_secrets_out(stack, fake):
    secret = "sk-in-a-query-string-0001"
    requests.get(stack.url + f"/v1/models?api_key={secret}", headers=AUTH, timeout=10)
    deadline = time.monotonic() + 10
    while "GET /v1/models" not in stack.app_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = stack.app_log.read_text()
    assert "GET /v1/models" in log
    for leaked in (secret, API_KEY, COOKIE.split("=", 1)[1][:20]):
        assert leaked not in log


def test_docker_healthcheck_command(stack):
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    command = re.search(r"^HEALTHCHECK .*?\\\n\s+CMD (.+)$", dockerfile, re.M).group(1)
    argv = shlex.split(command)
    argv[0] = sys.executable if argv[0] == "python" else argv[0]
    assert subprocess.run(argv, env={**os.environ, "PORT": str(stack.app_port)}, timeout=30).returncode == 0
    assert subprocess.run(argv, env={**os.environ, "PORT": str(_free_port())}, timeout=30,
                          capture_output=True).returncode != 0
    assert re.search(r'^CMD \["gunicorn", "-c", "gunicorn.conf.py", "app:app"\]$', dockerfile, re.M)


def test_gunicorn_settings_follow_the_app_settings(monkeypatch):
    import runpy

    monkeypatch.setenv("CONFIG_FILE", "")
    monkeypatch.setenv("MAX_CONCURRENT_REQUESTS", "300")
    monkeypatch.setenv("PORT", "8123")
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert conf["worker_class"] == "gevent" and conf["preload_app"] is False
    assert conf["bind"].endswith(":8123") and conf["worker_connections"] > 300, "room to answer 429s"
    assert conf["graceful_timeout"] >= 300 and conf["timeout"] >= 30
    assert not re.search(r"%\((r|q|u|f)\)s|\}i\)s", conf["access_log_format"]), "no query, user, referer or headers"


def test_reload_lets_open_streams_finish(stack, fake):
    # A stream of 40 paced chunks is open when gunicorn is told to reload (HUP), as a deploy does.
    fake.configure(answer="r" * 40, chunk_chars=1, chunk_delay=0.05)
    resp, chunks = _open(stack.app_url)
    first = next(chunks)
    assert first.startswith(b"data: ")
    stack.gunicorn.send_signal(signal.SIGHUP)
    body = first + b"".join(chunks)
    assert body.endswith(b"data: [DONE]\n\n") and _content(body) == "r" * 40
    assert stack.client().chat.completions.create(model="qwen3.7-plus", messages=MESSAGES).choices


def test_docker_image_copies_every_package_of_the_service():
    """The image holds the top-level modules and each product folder, so ``app:app`` imports in it."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = {part.rstrip("/") for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for part in line.split()[:-1]}
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == {"routes", "qwen_client", "identity_pool", "transform"}
    assert "*.py" in copied and packages <= copied, f"not copied into the image: {packages - copied}"


def test_a_run_of_spaces_does_not_freeze_the_worker(stack, fake):
    # The reported request: one gevent worker serves everyone, so a quadratic scan of it stopped /health too.
    body = json.dumps({"model": "qwen3-max", "messages": [{"role": "user", "content": "a" + " " * 200_000 + "b"}]})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, stack.url + "/v1/chat/completions", data=body,
                              headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
        health = requests.get(stack.url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"]
        answer = pending.result(timeout=40)
    assert answer.status_code in (200, 404), answer.text[:300]  # an answer, or "no such model": either way, at once
    assert "choices" in answer.json() or answer.json()["error"]["code"] == "model_not_found"


def test_a_browser_sized_cookie_in_client_mode_reaches_the_app(stack):
    # Client mode sends "key;token;cookie" in Authorization; browsers' Qwen cookies run past 8 KB.
    bearer = f"Bearer {API_KEY};;ssxmod_itna={'c' * 9000}"
    resp = requests.get(stack.url + "/v1/models", headers={"Authorization": bearer}, timeout=10)
    # The app's own answer (this stack is in server mode, so the whole value is taken as the key), not
    # nginx's or gunicorn's refusal of a long header.
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key", resp.text[:300]
