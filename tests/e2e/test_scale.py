"""Several workers and hosts agree: the figures of one worker, with gunicorn's workers sharing SQLite or Redis.

Each test runs the production command against the session's emulator in one of two shapes: one host with
4 workers and the default SQLite state file, or two hosts (two gunicorn instances, 2 workers each, on
different ports) sharing a real ``redis-server``. Every request opens a new connection, so the kernel spreads
them over the workers. Each figure is the one a single worker gets.
"""

from __future__ import annotations

import base64
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_client
import requests

from app import create_app
from config import ConfigError, load_settings
from identity_pool.accounts import Identity, jwt_claims
from tests.helpers import API_KEY, PNG, Gunicorn, RedisServer, chats_used, cookie, free_port

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "qwen3.7-plus"
SHAPES = ["sqlite-4-workers", "redis-2-hosts"]



class Hosts:
    """The proxies of one shape; ``url(n)`` spreads requests over the hosts, each on a new connection."""

    def __init__(self, instances: list[Gunicorn]) -> None:
        self.instances = instances

    def url(self, n: int) -> str:
        return self.instances[n % len(self.instances)].url

    def chat(self, n: int, messages: list[dict], **extra: object) -> requests.Response:
        with requests.Session() as fresh:  # a new connection per request, as many clients do
            return fresh.post(self.url(n) + "/v1/chat/completions", headers=AUTH, timeout=30,
                              json={"model": MODEL, "messages": messages, **extra})

    def stop(self) -> None:
        for instance in self.instances:
            instance.stop()

    def start(self) -> Hosts:
        starters = [threading.Thread(target=i.start) for i in self.instances]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        for instance in self.instances:
            instance.health()  # each one answers
        return self


@pytest.fixture
def cluster(request: pytest.FixtureRequest, fake_server, tmp: Path) -> Iterator[Callable[..., Hosts]]:
    """Start this test's shape with its settings; a fresh state file or Redis database per test."""
    started: list[Hosts] = []
    shape = request.param
    case = Path(tempfile.mkdtemp(dir=tmp))
    if shape == "redis-2-hosts":
        redis = request.getfixturevalue("redis_server")
        redis_client.Redis.from_url(redis.url).flushdb()

    def start(**settings: object) -> Hosts:
        if shape == "redis-2-hosts":
            hosts = Hosts([Gunicorn(fake_server.base_url, case, 2, REDIS_URL=redis.url, **settings) for _ in range(2)])
        else:
            hosts = Hosts([Gunicorn(fake_server.base_url, case, 4, **settings)])
        started.append(hosts)
        return hosts.start()

    yield start
    for hosts in started:
        hosts.stop()


def answered(fake, path: str = "/api/v2/chat/completions") -> list[str]:
    """The account behind each request the site got on ``path``."""
    return [jwt_claims(r.cookies.get("token", ""))["id"] for r in fake.requests_to(path)]


# ----------------------------------------------------------------- the issue's figures


@pytest.mark.parametrize("cluster", SHAPES, indirect=True)
def test_every_continued_turn_continues_its_upstream_chat(cluster, fake):
    hosts = cluster(COOKIE="|||".join(cookie(f"user-{n}") for n in range(2)))
    conversations: list[list[dict]] = [[{"role": "user", "content": f"conversation {n}"}] for n in range(4)]
    failures: list[str] = []

    def talk(n: int) -> None:
        history = conversations[n]
        for turn in range(4):
            resp = hosts.chat(n + turn, history)
            if resp.status_code != 200:
                failures.append(resp.text)
                return
            history += [resp.json()["choices"][0]["message"], {"role": "user", "content": f"and then {turn}"}]

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(chats_used(fake)) == 4, "12 of 12 continuable turns continued their chat"
    assert len(fake.requests_to("/api/v2/chat/completions")) == 16


@pytest.mark.parametrize("cluster", SHAPES, indirect=True)
def test_a_failing_account_is_tried_as_often_as_by_one_worker(cluster, fake):
    fake.configure(account_faults={"user-bad": "http_500"})
    hosts = cluster(COOKIE="|||".join([cookie("user-bad"), cookie("user-good")]), POOL_FAILURE_THRESHOLD=3)
    for n in range(24):
        resp = hosts.chat(n, [{"role": "user", "content": "hi"}])
        assert resp.status_code == 200, resp.text
    assert answered(fake).count("user-bad") == 3, "the breaker trips once for the whole cluster"
    for instance in hosts.instances:  # and every worker of every host says so
        for _ in range(4):
            accounts = instance.health()["accounts"]
            assert (accounts["down"], accounts["healthy"]) == (1, 1)
            assert sum(a["ok"] for a in accounts["accounts"]) == 24


@pytest.mark.parametrize("cluster", SHAPES, indirect=True)
def test_a_rotating_refresh_token_serves_every_request(cluster, fake):
    refresh = fake.issue_refresh_token("user-r")
    fake.configure(access_token_ttl=3)
    hosts = cluster(COOKIE=cookie("user-r", ttl=-60, refresh=refresh), TOKEN_REFRESH_CHECK_SECONDS=0.2)
    codes: list[int] = []

    def burst(first: int) -> None:
        for n in range(first, first + 10):
            codes.append(hosts.chat(n, [{"role": "user", "content": "hi"}]).status_code)

    threads = [threading.Thread(target=burst, args=(10 * k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes.count(200) == 80, f"{len(codes) - codes.count(200)} of 80 failed"
    refreshes = fake.requests_to("/api/v2/auths/refresh")
    assert refreshes and len({r.cookies["refresh_token"] for r in refreshes}) == len(refreshes), \
        "each refresh token was sent once, cluster-wide"
    assert all(i.health()["accounts"]["healthy"] == 1 for i in hosts.instances)


@pytest.mark.parametrize("cluster", SHAPES, indirect=True)
def test_the_same_image_is_uploaded_once(cluster, fake):
    hosts = cluster()
    image = f"data:image/png;base64,{base64.b64encode(PNG).decode()}"
    for n in range(8):
        content = [{"type": "text", "text": f"What is this? ({n})"}, {"type": "image_url", "image_url": {"url": image}}]
        assert hosts.chat(n, [{"role": "user", "content": content}]).status_code == 200
    assert len(fake.requests_to("/api/v2/files/getstsToken")) == 1


@pytest.mark.parametrize("cluster", SHAPES, indirect=True)
def test_a_restart_of_every_process_keeps_tokens_and_conversations(cluster, fake):
    refresh = fake.issue_refresh_token("user-r")
    settings = {"COOKIE": cookie("user-r", ttl=-60, refresh=refresh), "AUTO_REFRESH_TOKEN": "false"}
    hosts = cluster(**settings)
    history = [{"role": "user", "content": "remember me"}]
    first = hosts.chat(0, history)
    assert first.status_code == 200 and refresh not in fake.refresh_tokens  # renewed: the configured one is dead
    chats = len(chats_used(fake))
    hosts.stop()

    again = cluster(**settings)  # the same, now stale, configuration
    history += [first.json()["choices"][0]["message"], {"role": "user", "content": "still there?"}]
    for n in range(4):
        assert again.chat(n, history if n == 0 else [{"role": "user", "content": "hi"}]).status_code == 200
    assert len(fake.requests_to("/api/v2/auths/refresh")) == 1, "the stored token was used, not renewed again"
    assert fake.requests_to("/api/v2/chat/completions")[1].json["parent_id"], "the conversation continued"
    assert len(chats_used(fake)) == chats + 3, "only the three new conversations took a chat"


# ----------------------------------------------------------------- a store that is down


def test_a_store_that_does_not_answer_stops_the_start_with_a_clear_error(fake_server, tmp):
    closed = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError, match="REDIS_URL"):
        create_app(load_settings({"CONFIG_FILE": "", "COOKIE_FILE": "", "REDIS_URL": closed}, environ={}))
    blocked = tmp / "not-a-directory"
    blocked.write_text("")
    with pytest.raises(ConfigError, match="STATE_FILE"):
        create_app(load_settings({"CONFIG_FILE": "", "COOKIE_FILE": "", "STATE_FILE": str(blocked / "state")},
                                 environ={}))
    gunicorn = Gunicorn(fake_server.base_url, tmp, 1, REDIS_URL=closed)
    with pytest.raises(AssertionError):
        gunicorn.start(timeout=30)
    assert gunicorn.process.wait(timeout=10) != 0, "gunicorn stops instead of retrying a worker forever"
    assert "the shared state store does not answer" in gunicorn.log.read_text()


def test_a_redis_outage_degrades_to_memory_and_loses_no_token(fake_server, fake, tmp):
    redis = RedisServer(tmp).start()  # this test's own server: it is stopped mid-test
    refresh = fake.issue_refresh_token("user-r")
    account = cookie("user-r", refresh=refresh)
    hosts = Hosts([Gunicorn(fake_server.base_url, tmp, 2, REDIS_URL=redis.url, COOKIE=account,
                            AUTO_REFRESH_TOKEN="false")])
    key = f"qwen2openai:token:{Identity(cookie=account).key}"
    try:
        hosts.start()
        assert hosts.chat(0, [{"role": "user", "content": "hi"}]).status_code == 200
        redis.stop()
        codes = [hosts.chat(n, [{"role": "user", "content": "hi"}]).status_code for n in range(8)]
        assert codes == [200] * 8, "no 500s while the store is down"
        health = hosts.instances[0].health()
        assert health["status"] == "degraded" and "unreachable" in health["state"]["warning"]
        renewed = requests.post(hosts.url(0) + "/refresh-token", headers=AUTH, timeout=10).json()["data"]
        assert renewed[0]["result"] == "renewed"
        [alive] = [t for t, user in fake.refresh_tokens.items() if user == "user-r"]

        redis.start()  # the same port, empty: the worker that renewed writes its token back
        store = redis_client.Redis.from_url(redis.url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (store.get(key) and json.loads(store.get(key))["refresh_token"]
                                                   == alive):
            hosts.instances[0].health()  # each answer touches the store, which retries it
            time.sleep(0.1)
        assert json.loads(store.get(key))["refresh_token"] == alive, "the token renewed meanwhile was kept"
        assert all(hosts.instances[0].health()["state"]["status"] == "ok" for _ in range(6))
    finally:
        hosts.stop()
        redis.stop()


# ----------------------------------------------------------------- caps for the whole cluster


@pytest.mark.parametrize("cluster", ["sqlite-4-workers"], indirect=True)
def test_global_limits_count_every_worker(cluster, fake):
    fake.configure(answer="abcdefgh", chunk_chars=2, stall_after_events=3)
    hosts = cluster(COOKIE="|||".join(cookie(f"user-{n}") for n in range(2)), GLOBAL_LIMITS="true",
                    MAX_CONCURRENT_REQUESTS=2, ACCOUNT_MAX_CONCURRENCY=1)
    held = []
    for n in range(2):  # two streams held open, each on its own connection (and likely its own worker)
        session = requests.Session()  # kept open with its stream: a one-off requests.post hangs up within a second
        resp = session.post(hosts.url(n) + "/v1/chat/completions", headers=AUTH, stream=True, timeout=20,
                            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True})
        chunks = resp.iter_content(chunk_size=None)
        assert next(chunks).startswith(b"data: ")
        held.append((session, chunks))
    try:
        assert fake.wait_stalled(timeout=5, count=2)
        owners = answered(fake)
        assert sorted(owners) == ["user-0", "user-1"], "one turn at a time per account, cluster-wide"
        refused = hosts.chat(2, [{"role": "user", "content": "hi"}])
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_concurrent_requests"
        for _ in range(6):
            health = hosts.instances[0].health()
            assert health["requests"]["active"] == 2 and health["requests"]["scope"] == "global"
            assert [a["in_flight"] for a in health["accounts"]["accounts"]] == [1, 1]
    finally:
        fake.configure(stall_after_events=None)
        fake.release_stalls()
    for session, chunks in held:
        assert b"".join(chunks).endswith(b"data: [DONE]\n\n"), "held to the end"
        session.close()
