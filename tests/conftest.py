"""Shared fixtures: the emulator and the proxy on real loopback ports, and the official SDK client."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from openai import OpenAI

from tests.fake_qwen import FakeQwen, FakeQwenServer
from tests.helpers import API_KEY, ProxyServer, RedisServer


def pytest_configure(config: pytest.Config) -> None:
    # Loopback traffic must never go through a proxy from the environment.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(name, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    """A directory for one test module's files (gunicorn logs, SQLite state, redis-server's dir)."""
    path = Path(tempfile.mkdtemp(prefix="qwen2openai-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_server(tmp: Path) -> Iterator[RedisServer]:
    """A real redis-server on a loopback port, one per test module."""
    if not shutil.which("redis-server") and not Path("/usr/bin/redis-server").exists():
        pytest.fail("redis-server is not installed; .ci/run installs it (apt-get install redis-server)")
    server = RedisServer(tmp).start()
    yield server
    server.stop()


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


@pytest.fixture
def claude(proxy: ProxyServer, fake: FakeQwen) -> anthropic.Anthropic:
    """The official Anthropic client, pointed at the proxy as Claude Code is (ANTHROPIC_BASE_URL)."""
    proxy.app.extensions["qwen2openai"].uploader.forget()
    return anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, max_retries=0, timeout=20)
