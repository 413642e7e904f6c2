"""Usage per API key, account and model, ``GET /admin/api/usage`` and ``GET /metrics``, over real sockets.

The proxy runs on a loopback port in front of the emulator; callers are the
official ``openai`` and ``anthropic`` SDKs. Figures are compared with what the
SDKs were told (the site's own token counts), and ``/metrics`` is read with
``prometheus_client``'s own parser.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_qwen import make_jwt
from tests.helpers import API_KEY, COOKIE, TOKEN, Gunicorn, ProxyServer, RedisServer

ALICE, BOB = "sk-alice-fake-key-0001", "sk-bob-fake-key-0002"
KEYS = f"alice:{ALICE},bob:{BOB},{API_KEY}"
ADMIN_KEY = "admin-fake-key-0003"
METRICS_KEY = "metrics-fake-key-0004"
MODEL = "qwen3.7-plus"
SECOND = f"token={make_jwt('fake-user-0002')}; ssxmod_itna=fake-itna-2"


def accounts_cookie() -> str:
    return f"{COOKIE}|||{SECOND}"


@pytest.fixture
def state_file(tmp_path: Path) -> str:
    return str(tmp_path / "state.sqlite3")


def usage_of(url: str, key: str = ADMIN_KEY) -> dict:
    resp = requests.get(url + "/admin/api/usage", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def scrape(url: str, key: str | None = None) -> dict[str, list]:
    """Every sample of ``/metrics`` by metric family name, parsed by ``prometheus_client``'s own parser."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = requests.get(url + "/metrics", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(resp.text)}


def value(samples: list, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def chat(client: OpenAI, text: str, stream: bool = False, model: str = MODEL) -> tuple[int, int, int]:
    """One chat; the prompt, answer and reasoning tokens the SDK was told."""
    if stream:
        usage = None
        for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                    stream=True, stream_options={"include_usage": True}):
            usage = chunk.usage or usage
    else:
        usage = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}]).usage
    assert usage is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0
    return usage.prompt_tokens, usage.completion_tokens - reasoning, reasoning


# ----------------------------------------------------------------- usage per key, account and model


def test_usage_is_counted_per_key_account_and_model(make_proxy, fake, state_file):
    proxy = make_proxy(API_KEY=KEYS, ADMIN_KEY=ADMIN_KEY, STATE_FILE=state_file, COOKIE=accounts_cookie())
    fake.configure(thinking=["Weighing the question first."])
    told = {"alice": [0, 0, 0], "bob": [0, 0, 0]}
    for n in range(3):
        thinking = MODEL + "-thinking" if n == 2 else MODEL  # the same model's row: its id, not the variant's
        for i, got in enumerate(chat(proxy.client(ALICE), f"alice {n}", stream=n == 2, model=thinking)):
            told["alice"][i] += got
    for i, got in enumerate(chat(proxy.client(BOB), "bob", stream=True)):
        told["bob"][i] += got
    claude = anthropic.Anthropic(base_url=proxy.url, api_key=BOB, max_retries=0, timeout=20)
    message = claude.messages.create(model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "hi"}])
    told["bob"][0] += message.usage.input_tokens
    response = proxy.client(BOB).responses.create(model=MODEL, input="and the Responses API")
    told["bob"][0] += response.usage.input_tokens

    today = usage_of(proxy.url)["today"]
    alice, bob = today["by_key"]["alice"], today["by_key"]["bob"]
    assert alice["requests"] == 3 and bob["requests"] == 3
    assert [alice["prompt_tokens"], alice["completion_tokens"], alice["reasoning_tokens"]] == told["alice"]
    assert bob["prompt_tokens"] == told["bob"][0] and alice["prompt_tokens"] > 0 and alice["reasoning_tokens"] > 0
    assert "errors" not in alice or alice["errors"] == 0
    assert set(today["by_account"]) == {"account-1", "account-2"}, "round robin: both accounts served"
    assert sum(a["requests"] for a in today["by_account"].values()) == 6
    assert today["by_model"][MODEL]["requests"] == 6
    assert today["total"] == usage_of(proxy.url)["7d"]["total"]
    assert sum(h["requests"] for h in usage_of(proxy.url)["hourly"]) == 6


def test_usage_survives_a_restart(make_proxy, fake, state_file):
    first = make_proxy(API_KEY=KEYS, ADMIN_KEY=ADMIN_KEY, STATE_FILE=state_file)
    chat(first.client(ALICE), "before the restart")
    first.__exit__(None, None, None)
    second = make_proxy(API_KEY=KEYS, ADMIN_KEY=ADMIN_KEY, STATE_FILE=state_file)
    chat(second.client(ALICE), "after the restart")
    assert usage_of(second.url)["today"]["by_key"]["alice"]["requests"] == 2


def test_errors_are_counted_by_class_and_unnamed_keys_by_a_masked_prefix(make_proxy, fake, state_file):
    proxy = make_proxy(API_KEY=KEYS, ADMIN_KEY=ADMIN_KEY, STATE_FILE=state_file)
    client = proxy.client(API_KEY)
    with pytest.raises(Exception):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    fake.configure(fault="rate_limited")
    with pytest.raises(Exception):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    by_key = usage_of(proxy.url)["today"]["by_key"]
    assert API_KEY not in by_key and list(by_key) == ["sk-tes…"], "a plain key shows only a short prefix"
    row = by_key["sk-tes…"]
    assert row["requests"] == 2 and row["errors"] == 2
    assert row["error:client"] == 1 and row["error:rate_limit"] == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks its videos API so
def test_pictures_and_clips_are_counted(make_proxy, fake, state_file):
    proxy = make_proxy(API_KEY=KEYS, ADMIN_KEY=ADMIN_KEY, STATE_FILE=state_file)
    proxy.client(ALICE).images.generate(prompt="a fox", n=2, size="1024x1024")
    proxy.client(BOB).videos.create(prompt="waves at dusk", size="720x1280", seconds="4")
    by_key = usage_of(proxy.url)["today"]["by_key"]
    assert (by_key["alice"]["requests"], by_key["alice"]["images"]) == (1, 2)
    assert (by_key["bob"]["requests"], by_key["bob"]["videos"]) == (1, 1)


def test_the_admin_usage_api_needs_the_admin_key(make_proxy, fake, state_file):
    closed = make_proxy(API_KEY=KEYS, STATE_FILE=state_file)
    assert requests.get(closed.url + "/admin/api/usage", timeout=5).status_code == 404, "no ADMIN_KEY: no route"
    proxy = make_proxy(API_KEY=KEYS, ADMIN_KEY=ADMIN_KEY, STATE_FILE=state_file)
    for headers in ({}, {"Authorization": f"Bearer {ALICE}"}, {"Authorization": "Bearer x"}):
        resp = requests.get(proxy.url + "/admin/api/usage", headers=headers, timeout=5)
        assert resp.status_code == 401 and ADMIN_KEY not in resp.text


# ----------------------------------------------------------------- /metrics


def test_metrics_in_one_process(make_proxy, fake, state_file):
    proxy = make_proxy(API_KEY=KEYS, STATE_FILE=state_file, COOKIE=accounts_cookie())
    fake.configure(thinking=["Weighing the question first."])
    told = chat(proxy.client(ALICE), "one", stream=True, model=MODEL + "-thinking")
    chat(proxy.client(BOB), "two")
    fake.configure(fault="http_500")
    with pytest.raises(Exception):
        chat(proxy.client(BOB), "three")
    fake.configure(fault=None)
    families = scrape(proxy.url)
    requests_total = families["qwen2openai_requests"]
    assert value(requests_total, "qwen2openai_requests_total", route="/v1/chat/completions", status="200") == 2
    assert value(requests_total, "qwen2openai_requests_total", route="/v1/chat/completions", status="502") == 1
    tokens = families["qwen2openai_tokens"]
    for kind, n in zip(("prompt", "completion", "reasoning"), told):
        assert value(tokens, "qwen2openai_tokens_total", key="alice", model=MODEL, kind=kind) == n
    assert value(tokens, "qwen2openai_tokens_total", key="bob", kind="prompt") > 0
    failures = families["qwen2openai_upstream_failures"]
    assert value(failures, "qwen2openai_upstream_failures_total", **{"class": "upstream"}) >= 1
    assert {s.labels["account"] for s in failures} <= {"account-1", "account-2"}
    accounts = families["qwen2openai_accounts"]
    assert sum(s.value for s in accounts) == 2 and {s.labels["state"] for s in accounts} == {"healthy", "degraded",
                                                                                             "down"}
    ttfb = families["qwen2openai_time_to_first_byte_seconds"]
    assert value(ttfb, "qwen2openai_time_to_first_byte_seconds_count") == 2
    assert value(families["qwen2openai_open_streams"], "qwen2openai_open_streams") == 0


def test_a_stream_is_counted_open_while_it_runs_and_its_late_failure_as_an_error(make_proxy, fake, state_file):
    fake.configure(answer="abcdefghijkl", chunk_chars=2, stall_after_events=3)
    proxy = make_proxy(API_KEY=KEYS, ADMIN_KEY=ADMIN_KEY, STATE_FILE=state_file, READ_TIMEOUT=1)
    stream = proxy.client(ALICE).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                         stream=True)
    next(iter(stream))  # the first output: the stream is open, and the site has gone silent
    assert value(scrape(proxy.url)["qwen2openai_open_streams"], "qwen2openai_open_streams") == 1
    with pytest.raises(Exception, match="stopped sending"):
        for _ in stream:
            pass
    # The error event leaves before the turn is closed behind it: wait (bounded) for the close.
    deadline = time.monotonic() + 5
    while value(scrape(proxy.url)["qwen2openai_open_streams"], "qwen2openai_open_streams") and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    assert value(scrape(proxy.url)["qwen2openai_open_streams"], "qwen2openai_open_streams") == 0
    alice = usage_of(proxy.url)["today"]["by_key"]["alice"]
    assert (alice["requests"], alice["errors"], alice["error:upstream"]) == (1, 1, 1), "failed after HTTP 200"


def test_metrics_hold_no_secret(make_proxy, fake, state_file):
    proxy = make_proxy(API_KEY=KEYS, STATE_FILE=state_file, METRICS_KEY=METRICS_KEY, ADMIN_KEY=ADMIN_KEY)
    chat(proxy.client(ALICE), "one")
    chat(proxy.client(API_KEY), "two")
    text = requests.get(proxy.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}, timeout=5).text
    for secret in (ALICE, BOB, API_KEY, METRICS_KEY, ADMIN_KEY, TOKEN, COOKIE, "fake-itna"):
        assert secret not in text
    assert 'key="alice"' in text and 'key="sk-tes…"' in text


def test_metrics_key_guards_the_metrics(make_proxy, fake, state_file):
    proxy = make_proxy(API_KEY=KEYS, STATE_FILE=state_file, METRICS_KEY=METRICS_KEY)
    for headers in ({}, {"Authorization": f"Bearer {ALICE}"}, {"Authorization": "Bearer metrics"}):
        resp = requests.get(proxy.url + "/metrics", headers=headers, timeout=5)
        assert resp.status_code == 401 and METRICS_KEY not in resp.text
    assert "qwen2openai_requests_total" in str(scrape(proxy.url, METRICS_KEY))


@pytest.fixture(scope="module")
def guarded(fake_server, tmp_path_factory) -> Iterator[str]:
    state = str(tmp_path_factory.mktemp("guarded") / "state.sqlite3")
    with ProxyServer(fake_server.base_url, API_KEY=KEYS, ADMIN_KEY=ADMIN_KEY, METRICS_KEY=METRICS_KEY,
                     STATE_FILE=state) as server:
        yield server.url


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
       path=st.sampled_from(["/metrics", "/admin/api/usage"]))
def test_any_authorization_gets_401_never_5xx(guarded, header, path):
    header = header.strip()  # what an HTTP client can send
    resp = requests.get(guarded + path, headers={"Authorization": header}, timeout=10)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["type"] and METRICS_KEY not in resp.text and ADMIN_KEY not in resp.text


# ----------------------------------------------------------------- two gunicorn workers


@pytest.fixture(params=["sqlite", "redis"])
def two_workers(request: pytest.FixtureRequest, fake_server, tmp_path: Path) -> Iterator[Gunicorn]:
    """Two gunicorn workers sharing the default SQLite state file, or a real redis-server.

    The Redis run names its own ``PROMETHEUS_MULTIPROC_DIR``; the SQLite run leaves it to gunicorn.conf.py.
    """
    redis = RedisServer(tmp_path).start() if request.param == "redis" else None
    shared = {"REDIS_URL": redis.url, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")} if redis else {}
    server = Gunicorn(fake_server.base_url, tmp_path, 2, API_KEY=KEYS, ADMIN_KEY=ADMIN_KEY, **shared).start()
    yield server
    server.stop()
    if redis is not None:
        redis.stop()


def test_usage_and_metrics_add_up_across_two_workers(two_workers, fake):
    client = OpenAI(base_url=two_workers.url + "/v1", api_key=ALICE, max_retries=0, timeout=20)
    workers: set[int] = set()
    sent = 0

    def health() -> None:
        with requests.Session() as fresh:  # a new connection each: the kernel spreads them over the workers
            workers.add(fresh.get(two_workers.url + "/health", timeout=5).json()["worker"])

    while sent < 80 and (len(workers) < 2 or sent < 8):  # four chats at once, so a busy worker leaves some
        batch = [threading.Thread(target=chat, args=(client, f"turn {sent + n}")) for n in range(4)]
        batch += [threading.Thread(target=health) for _ in range(4)]
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join()
        sent += 4
    assert len(workers) == 2, "both workers answered"
    seen: set[int] = set()
    for _ in range(20):  # every worker reads the same figures: the shared store and the shared metric files
        with requests.Session() as fresh:
            seen.add(fresh.get(two_workers.url + "/health", timeout=5).json()["worker"])
            families = scrape(two_workers.url)
            assert usage_of(two_workers.url)["today"]["by_key"]["alice"]["requests"] == sent
            total = value(families["qwen2openai_requests"], "qwen2openai_requests_total",
                          route="/v1/chat/completions", status="200")
            assert total == sent
            assert value(families["qwen2openai_tokens"], "qwen2openai_tokens_total", key="alice", kind="prompt") > 0
            assert sum(s.value for s in families["qwen2openai_accounts"]) == 1
    chosen = two_workers.env.get("PROMETHEUS_MULTIPROC_DIR")
    if chosen:  # honoured: both workers' counters are there
        assert len(list(Path(chosen).glob("counter_*.db"))) == 2
