"""Shared fixtures: the emulator and the proxy on real loopback ports, and the official SDK client."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from werkzeug.serving import make_server

from app import create_app
from config import load_settings
from qwen_wire import SSEDecoder
from tests.fake_qwen import FakeQwen, FakeQwenServer, make_jwt

SHARED = Path(os.environ.get("QWEN2OPENAI_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures" / "qwen-web"

# Obviously fake credentials: the suite checks that none of them ever reaches a log or a response.
TOKEN = make_jwt("fake-user-0001")
COOKIE = f"token={TOKEN}; ssxmod_itna=fake-itna-cookie-value"
API_KEY = "sk-test-fake-key-0001"


def pytest_configure(config: pytest.Config) -> None:
    # Loopback traffic must never go through a proxy from the environment.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(name, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    if not FIXTURES.is_dir():
        raise pytest.UsageError(f"protocol fixtures not found at {FIXTURES}; set QWEN2OPENAI_SHARED")


def fixture_events(name: str) -> list[dict[str, Any]]:
    """The events of a captured SSE file, decoded by our own decoder."""
    return [json.loads(d) for d in SSEDecoder().iter_payloads([(FIXTURES / name).read_bytes()])]


class ProxyServer:
    """The proxy app served by Werkzeug on a free loopback port, in a thread."""

    def __init__(self, upstream: str, **overrides: Any) -> None:
        settings = {"CONFIG_FILE": "", "COOKIE_FILE": "", "QWEN_BASE_URL": upstream, "COOKIE": COOKIE,
                    "API_KEY": API_KEY, "READ_TIMEOUT": 10, "CONNECT_TIMEOUT": 2, "TOKEN_STORE_FILE": "",
                    "QWEN_AUTH_URL": upstream, "QWEN_OSS_ENDPOINT": upstream, "MEDIA_RETRY_DELAY": 0.01,
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
        self.app.extensions["qwen2openai"].conversations.close()
        self.app.extensions["qwen2openai"].pool.close()

    def client(self, api_key: str = API_KEY, **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=20, **kwargs)


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeQwenServer]:
    with FakeQwenServer() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeQwenServer) -> Iterator[FakeQwen]:
    fake_server.fake.reset()
    yield fake_server.fake
    fake_server.fake.reset()


@pytest.fixture
def base(fake_server: FakeQwenServer) -> str:
    """The emulator's URL, for tests that speak its protocol directly."""
    return fake_server.base_url


@pytest.fixture
def proxy(fake_server: FakeQwenServer) -> Iterator[ProxyServer]:
    """A fresh proxy per test: the pool learns from failures, and tests must not inherit that."""
    with ProxyServer(fake_server.base_url) as server:
        yield server


@pytest.fixture
def make_proxy(fake_server: FakeQwenServer) -> Iterator[Any]:
    """Start a proxy with its own settings for one test."""
    started: list[ProxyServer] = []

    def start(**overrides: Any) -> ProxyServer:
        server = ProxyServer(overrides.pop("upstream", fake_server.base_url), **overrides).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


@pytest.fixture
def client(proxy: ProxyServer, fake: FakeQwen) -> OpenAI:
    proxy.app.extensions["qwen2openai"].uploader.forget()  # the reset site no longer has earlier uploads
    return proxy.client()
