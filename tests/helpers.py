"""What the tests share: fake credentials, the captures, the proxy on a real port, and plain clients of the emulator.

- the obviously fake credentials every test uses, and the captured SSE files (``fixture_events``);
- ``ProxyServer``: the proxy app served by Werkzeug on a free loopback port;
- ``headers``, ``new_chat``, ``turn_body``, ``post_turn``, ``stream_events``: speaking the
  site's protocol to the emulator directly, as the emulator's own tests do;
- ``grant``, ``put``: the emulator's upload endpoints, signed by Aliyun's own ``oss2`` SDK;
- ``MediaHost``: a stand-in for the web servers whose image and video URLs clients send;
- ``RESPONSES_BODY``: a Hypothesis strategy of Responses API bodies, valid and not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import oss2
import requests
from hypothesis import strategies as st
from openai import OpenAI
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from app import close_app, create_app
from config import load_settings
from qwen_client.wire import SSEDecoder
from tests.fake_qwen import make_jwt

# Copies of the protocol reference's captures, so the suite runs from a bare clone (README there says whence).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "qwen-web"

# Obviously fake credentials: the suite checks that none of them ever reaches a log or a response.
TOKEN = make_jwt("fake-user-0001")
COOKIE = f"token={TOKEN}; ssxmod_itna=fake-itna-cookie-value"
API_KEY = "sk-test-fake-key-0001"


def fixture_events(name: str) -> list[dict[str, Any]]:
    """The events of a captured SSE file, decoded by our own decoder."""
    return [json.loads(d) for d in SSEDecoder().iter_payloads([(FIXTURES / name).read_bytes()])]


class ProxyServer:
    """The proxy app served by Werkzeug on a free loopback port, in a thread."""

    def __init__(self, upstream: str, **overrides: Any) -> None:
        settings = {"CONFIG_FILE": "", "COOKIE_FILE": "", "QWEN_BASE_URL": upstream, "COOKIE": COOKIE,
                    "API_KEY": API_KEY, "READ_TIMEOUT": 10, "CONNECT_TIMEOUT": 2, "TOKEN_STORE_FILE": "",
                    "STATE_FILE": "", "QWEN_AUTH_URL": upstream, "QWEN_OSS_ENDPOINT": upstream,
                    "MEDIA_RETRY_DELAY": 0.01,
                    "VIDEO_POLL_INTERVAL": 0.01, **overrides}
        self.settings = load_settings(settings, environ={})
        self.app = create_app(self.settings)
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> ProxyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        close_app(self.app)  # as a stopping worker does
        self.app.extensions["qwen2openai"].pool.close()

    def client(self, api_key: str = API_KEY, **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=20, **kwargs)


def chats_used(fake: Any) -> list[str]:
    """The chats the site's completions went into, each once, in order: what "one chat per conversation" means.

    Counting ``chats/new`` calls no longer says it: the proxy makes a spare chat
    ahead of the next new conversation (``qwen_client/spare_chats.py``).
    """
    return list(dict.fromkeys(r.query["chat_id"] for r in fake.requests_to("/api/v2/chat/completions")))


def spare_chats(server: ProxyServer) -> set[str]:
    """The chats ``server`` holds ready for the next new conversation, once it has finished making them."""
    spares = server.app.extensions["qwen2openai"].conversations.spares
    assert spares.wait_idle(5), "spare chats are made within seconds"
    return spares.chat_ids()


# ------------------------------------------------------------ what several test modules share

# fault → (SDK exception, HTTP status, error code, words the message must contain)
PRE_STREAM = {
    "http_401": (openai.InternalServerError, 502, "upstream_unauthorized", "token"),
    "http_403": (openai.InternalServerError, 502, "upstream_http_403", "403"),
    "http_404": (openai.InternalServerError, 502, "upstream_http_404", "404"),
    "http_429": (openai.RateLimitError, 429, "rate_limit_exceeded", "rate-limiting"),
    "http_500": (openai.InternalServerError, 502, "upstream_http_500", "500"),
    "http_502": (openai.InternalServerError, 502, "upstream_http_502", "502"),
    "http_503": (openai.InternalServerError, 503, "service_unavailable", "unavailable"),
    "http_504": (openai.InternalServerError, 504, "upstream_timeout", "timed out"),
    "bad_request": (openai.InternalServerError, 502, "upstream_bad_request", "Internal error"),
    "rate_limited": (openai.RateLimitError, 429, "upstream_rate_limited", "hour"),
    "unauthorized": (openai.InternalServerError, 502, "upstream_unauthorized", "fresh cookie"),
    "chat_not_found": (openai.InternalServerError, 502, "upstream_not_found", "CHAT_NOT_FOUND"),
    "parallel_limited": (openai.RateLimitError, 429, "upstream_rate_limited", "ParallelLimited"),
    "envelope_top_level": (openai.InternalServerError, 502, "upstream_bad_request", "Bad_Request"),
    "stream_error_string": (openai.InternalServerError, 502, "upstream_error", "Internal error!"),
    "stream_error_code": (openai.BadRequestError, 400, "upstream_invalid_input", "invalid_input"),
    "stream_quota_limit": (openai.RateLimitError, 429, "upstream_rate_limited", "quota_limit"),
    "stream_data_inspection": (openai.BadRequestError, 400, "content_policy_violation", "moderation"),
    "stream_success_false": (openai.RateLimitError, 429, "upstream_rate_limited", "RateLimited"),
    "stream_delta_error": (openai.InternalServerError, 502, None, "refused"),
    "empty_stream": (openai.InternalServerError, 502, "upstream_empty_response", "no answer"),
    "created_only": (openai.InternalServerError, 502, "upstream_empty_response", "no answer"),
    "x5sec": (openai.RateLimitError, 429, "upstream_challenge", "challenged"),
    "x5sec_in_stream": (openai.RateLimitError, 429, "upstream_challenge", "challenged"),
    "waf_html": (openai.RateLimitError, 429, "upstream_challenge", "WAF"),
    "waf_html_403": (openai.RateLimitError, 429, "upstream_challenge", "WAF"),
    "waf_in_stream": (openai.RateLimitError, 429, "upstream_challenge", "challenged"),
    "gateway_html_405": (openai.InternalServerError, 502, "upstream_http_405", "405"),
    "non_json_200": (openai.InternalServerError, 502, "upstream_error", "instead of an API response"),
}


def cookie(user: str, *, ttl: int = 30 * 86400, refresh: str | None = None) -> str:
    """An account line's browser cookie for ``user``: its token, a WAF cookie, and a refresh token if given."""
    parts = [f"token={make_jwt(user, ttl=ttl)}", "ssxmod_itna=fake-itna"]
    return "; ".join(parts + ([f"refresh_token={refresh}"] if refresh else []))


# ------------------------------------------------------------ the emulator, spoken to directly


MODEL = "qwen3.7-plus"
TIMEOUT = 5


def headers(token: str | None = None, *, cookie: bool = True, bearer: bool = True,
            version: bool = True) -> dict[str, str]:
    token = token or make_jwt()
    out = {"source": "web", "Content-Type": "application/json", "Accept": "application/json",
           "Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin",
           "timezone": "Fri Sep 18 2026 12:30:00 GMT+0800", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
    if cookie:
        out["Cookie"] = f"token={token}; ssxmod_itna=abc"
    if bearer:
        out["Authorization"] = f"Bearer {token}"
    if version:
        out["version"] = "0.2.0"
    return out


def new_chat(base: str, token: str | None = None, chat_type: str = "t2t") -> str:
    body = {"chatId": "", "title": "New Chat", "models": [MODEL], "chat_mode": "normal",
            "chat_type": chat_type, "timestamp": int(time.time() * 1000), "project_id": ""}
    resp = requests.post(f"{base}/api/v2/chats/new", json=body, headers=headers(token), timeout=TIMEOUT)
    assert resp.status_code == 200 and resp.json()["success"] is True
    return resp.json()["data"]["id"]


def turn_body(chat_id: str, content: str = "Explain SSE.", *, thinking: bool = True,
              schema: str | None = "phase", parent_id: str | None = None, fid: str = "fid-1",
              chat_type: str = "t2t", auto_search: bool = False, stream: bool = True) -> dict:
    features: dict[str, Any] = {"thinking_enabled": thinking, "auto_thinking": thinking,
                                "thinking_mode": "Auto" if thinking else "Fast", "auto_search": auto_search}
    if schema is not None:
        features["output_schema"] = schema
    message = {"id": None, "fid": fid, "parentId": parent_id, "childrenIds": [], "role": "user",
               "content": content, "user_action": "chat", "files": [], "timestamp": int(time.time()),
               "models": [MODEL], "model": "", "chat_type": chat_type, "feature_config": features,
               "extra": {"meta": {"subChatType": chat_type}}, "sub_chat_type": chat_type,
               "parent_id": parent_id}
    return {"stream": stream, "version": "2.1", "incremental_output": True, "chat_id": chat_id,
            "chat_mode": "normal", "model": MODEL, "parent_id": parent_id, "messages": [message],
            "timestamp": int(time.time())}


def post_turn(base: str, chat_id: str | None, body: dict, hdrs: dict | None = None) -> requests.Response:
    url = f"{base}/api/v2/chat/completions" + (f"?chat_id={chat_id}" if chat_id else "")
    return requests.post(url, json=body, headers=hdrs or headers(), stream=True, timeout=TIMEOUT)


def raw_chunks(resp: requests.Response) -> list[bytes]:
    return [c for c in resp.iter_content(None) if c]


def parse_sse(raw: bytes) -> list[str]:
    """Test-local SSE parsing: data lines joined per event, comments ignored, any line ending."""
    events: list[str] = []
    data: list[str] = []
    for line in re.split(r"\r\n|\r|\n", raw.decode("utf-8")):
        if line == "":
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return events


def stream_events(resp: requests.Response) -> list[Any]:
    return [e if e == "[DONE]" else json.loads(e) for e in parse_sse(b"".join(raw_chunks(resp)))]


def delta(event: dict) -> dict:
    return event["choices"][0]["delta"]


def run_turn(base: str, **kw: Any) -> tuple[str, list[Any]]:
    chat_id = new_chat(base)
    resp = post_turn(base, chat_id, turn_body(chat_id, **kw))
    assert resp.status_code == 200
    return chat_id, stream_events(resp)


# ------------------------------------------------------------ the emulator's uploads


UPLOADER_TOKEN = make_jwt("uploader-0001")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def site(base: str, path: str, body: Any, token: str = UPLOADER_TOKEN) -> requests.Response:
    headers = {"Cookie": f"token={token}", "source": "web", "version": "0.2.0"}
    return requests.post(base + path, json=body, headers=headers, timeout=TIMEOUT)


def grant(base: str, filename: str = "a.png", size: int = len(PNG), filetype: str = "image",
          path: str = "/api/v2/files/getstsToken", token: str = UPLOADER_TOKEN) -> dict:
    resp = site(base, path, {"filename": filename, "filesize": str(size), "filetype": filetype}, token)
    assert resp.status_code == 200
    body = resp.json()
    return body["data"] if "success" in body else body


def bucket_for(base: str, answer: dict, *, token: str | None = None, secret: str | None = None) -> oss2.Bucket:
    provider = oss2.credentials.StaticCredentialsProvider(
        answer["access_key_id"], secret or answer["access_key_secret"], token or answer["security_token"])
    region = answer["region"].removeprefix("oss-")
    return oss2.Bucket(oss2.ProviderAuthV4(provider), base, answer["bucketname"], region=region)


def put(base: str, answer: dict, data: bytes = PNG, content_type: str = "image/png", **kwargs: Any) -> Any:
    bucket = bucket_for(base, answer, **kwargs)
    return bucket.put_object(answer["file_path"], data, headers={"Content-Type": content_type})


# ------------------------------------------------------------ a stranger's media host


@dataclass
class Served:
    body: bytes = b""
    content_type: str = "image/png"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    stall_after: int | None = None  # send this many bytes, then hold the connection until released


class MediaHost:
    """Serves ``routes`` on a loopback port and records each request's path and headers."""

    def __init__(self) -> None:
        self.routes: dict[str, Served] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.released = threading.Event()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def serve(self, path: str, body: bytes = b"", **kwargs: Any) -> str:
        self.routes[path] = Served(body, **kwargs)
        return self.url + path

    def _app(self, environ: dict, start_response: Any) -> Any:
        request = Request(environ)
        self.seen.append((request.full_path.rstrip("?"), dict(request.headers)))
        served = self.routes.get(request.path)
        if served is None:
            return Response(b"not here", status=404)(environ, start_response)
        body: Any = served.body if served.stall_after is None else self._stalling(served)
        response = Response(body, status=served.status, content_type=served.content_type, headers=served.headers)
        return response(environ, start_response)

    def _stalling(self, served: Served) -> Iterator[bytes]:
        yield served.body[: served.stall_after]
        self.released.wait(30)

    def __enter__(self) -> MediaHost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


# ------------------------------------------------------------ generated Responses API bodies


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "input_image", "input_file", "output_text", "refusal", "x"])},
    optional={"text": _JSON, "image_url": _JSON, "file_data": _JSON},
)
_ITEM = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "x"]),
    "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | _JSON,
    "content": st.lists(_PART, max_size=3) | _JSON,
    "call_id": _JSON, "name": _JSON, "arguments": _JSON, "output": _JSON,
})
_TOOL = st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search", "x"])},
                              optional={"name": _JSON, "parameters": _JSON})
#: Responses API bodies, mostly almost valid: each field a plausible shape or any JSON value.
RESPONSES_BODY = st.fixed_dictionaries(
    {"model": st.just("qwen3.7-plus") | _JSON, "input": st.lists(_ITEM, max_size=4) | _JSON},
    optional={
        "instructions": _JSON, "tools": st.lists(_TOOL, max_size=3) | _JSON, "tool_choice": _JSON,
        "text": st.fixed_dictionaries({"format": _JSON}) | _JSON, "reasoning": _JSON, "max_output_tokens": _JSON,
        "parallel_tool_calls": _JSON, "previous_response_id": _JSON, "store": _JSON, "stream": _JSON,
        "metadata": _JSON,
    },
)


# ------------------------------------------------------------ several processes: gunicorn and redis-server


ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """The production command (``gunicorn -c gunicorn.conf.py app:app``) with ``workers`` workers on a free port.

    ``settings`` go into the environment, as an operator sets them; ``pids`` are
    the workers that have answered ``/health`` so far.
    """

    def __init__(self, upstream: str, tmp: Path, workers: int, **settings: Any) -> None:
        self.port, self.workers = free_port(), workers
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"gunicorn-{self.port}.log"
        base = {"CONFIG_FILE": "", "COOKIE_FILE": "", "QWEN_BASE_URL": upstream, "COOKIE": COOKIE,
                "API_KEY": API_KEY, "HOST": "127.0.0.1", "READ_TIMEOUT": "10", "TOKEN_STORE_FILE": "",
                "QWEN_AUTH_URL": upstream, "QWEN_OSS_ENDPOINT": upstream, "STATE_FILE": str(tmp / "state.sqlite3")}
        self.env = {**os.environ, **base, **{k: str(v) for k, v in settings.items()},
                    "PORT": str(self.port), "WEB_CONCURRENCY": str(workers)}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Gunicorn:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
                                            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline, pids = time.monotonic() + timeout, set()
        while len(pids) < self.workers:  # every worker has built its app (not only the first)
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not start {self.workers} workers:\n{self.log.read_text()[-3000:]}")
            try:
                pids.add(requests.get(self.url + "/health", timeout=10).json()["worker"])
            except (requests.RequestException, ValueError):  # not listening yet, or busy booting
                time.sleep(0.1)
            except KeyError:  # a build that does not say which worker answered: count the boots
                if self.log.read_text().count("Booting worker") >= self.workers:
                    time.sleep(2)
                    break
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # quick: no stream is open between tests
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def health(self) -> dict:
        return requests.get(self.url + "/health", timeout=5).json()

    def worker_pids(self) -> list[int]:
        """The master's live children, its workers (from /proc)."""
        assert self.process is not None
        pid = self.process.pid
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def kill(self) -> None:
        """``kill -9`` every process of this instance, workers first: nothing gets to clean up."""
        assert self.process is not None
        for pid in self.worker_pids():
            os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait(timeout=10)


class RedisServer:
    """A real ``redis-server`` on a free loopback port, with nothing saved to disk; ``stop`` and ``start`` again."""

    def __init__(self, tmp: Path) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port, self.tmp = free_port(), tmp
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(self.tmp)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


# ------------------------------------------------------------ an outbound HTTP proxy that counts what it carries


class CountingProxy:
    """A small forwarding HTTP proxy on a loopback port: ``CONNECT`` tunnels and absolute-form requests.

    Each request it carries is recorded in ``seen`` as (method, target, headers); with
    ``auth=("user", "pass")`` it answers 407 unless ``Proxy-Authorization`` carries them.
    """

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        import base64
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.expected = "Basic " + base64.b64encode(":".join(auth).encode()).decode() if auth else None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock, self._closed = threading.Lock(), False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        with self._lock:
            return [re.sub(r"^https?://[^/]+", "", target).split("?")[0] for _, target, _ in self.seen]

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            reader = conn.makefile("rb")
            head = reader.readline().decode("latin-1").split()
            if len(head) != 3:
                return
            method, target, _ = head
            headers: dict[str, str] = {}
            while (line := reader.readline().decode("latin-1").rstrip("\r\n")):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            with self._lock:
                self.seen.append((method, target, headers))
            if self.expected and headers.get("proxy-authorization") != self.expected:
                conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                upstream = socket.create_connection((host, int(port)), timeout=10)
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._pipe(conn, upstream, reader.read1(65536) if reader.peek(1) else b"")
                return
            parts = re.match(r"https?://([^/:]+):?(\d*)(/.*)?$", target)
            if parts is None:
                return
            body = reader.read(int(headers.get("content-length") or 0))
            upstream = socket.create_connection((parts.group(1), int(parts.group(2) or 80)), timeout=10)
            kept = "".join(f"{k}: {v}\r\n" for k, v in headers.items()
                           if not k.startswith("proxy-") and k != "connection")
            upstream.sendall(f"{method} {parts.group(3) or '/'} HTTP/1.1\r\n{kept}Connection: close\r\n\r\n"
                             .encode("latin-1") + body)
            self._pipe(conn, upstream, b"")

    @staticmethod
    def _pipe(client: socket.socket, upstream: socket.socket, pending: bytes) -> None:
        """Relay both ways until either side closes."""
        import selectors
        with upstream, selectors.DefaultSelector() as selector:
            if pending:
                upstream.sendall(pending)
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while True:
                for key, _ in selector.select(timeout=30):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)


class SocksProxy(CountingProxy):
    """The same on SOCKS5 (RFC 1928, with RFC 1929 user/password when ``auth`` is set).

    A SOCKS proxy sees only where a connection goes; ``seen`` records each tunnel's
    first request line as it passes (the calls are plain HTTP to the emulator).
    """

    def url(self, userinfo: str = "", scheme: str = "socks5") -> str:
        return f"{scheme}://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            reader = conn.makefile("rb")
            version, count = reader.read(2)
            methods = reader.read(count)
            wanted = 2 if self.expected else 0
            if version != 5 or wanted not in methods:
                conn.sendall(b"\x05\xff")
                return
            conn.sendall(bytes([5, wanted]))
            if wanted == 2:
                reader.read(1)
                user = reader.read(reader.read(1)[0]).decode()
                password = reader.read(reader.read(1)[0]).decode()
                import base64
                ok = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() == self.expected
                conn.sendall(b"\x01\x00" if ok else b"\x01\x01")
                if not ok:
                    return
            _, command, _, kind = reader.read(4)
            host = (socket.inet_ntoa(reader.read(4)) if kind == 1 else reader.read(reader.read(1)[0]).decode()
                    if kind == 3 else socket.inet_ntop(socket.AF_INET6, reader.read(16)))
            port = int.from_bytes(reader.read(2), "big")
            if command != 1:
                conn.sendall(b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00")
                return
            upstream = socket.create_connection((host, port), timeout=10)
            conn.sendall(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
            first = conn.recv(65536)
            line = first.split(b"\r\n", 1)[0].decode("latin-1").split()
            with self._lock:
                self.seen.append((line[0] if line else "", f"http://{host}:{port}{line[1] if len(line) > 1 else ''}",
                                  {"socks-host": host}))
            self._pipe(conn, upstream, first)
