"""Streams that scale: keep-alive pings, admission, and hang-ups that reach the site, on the threaded server.

The same code runs under gunicorn's gevent worker; ``test_deploy.py`` drives that through nginx.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from config import ConfigError, load_settings
from tests.helpers import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MESSAGES = [{"role": "user", "content": "hi"}]
PING = b": ping\n\n"


def _open(url: str, **extra) -> tuple[requests.Response, Iterator[bytes]]:
    """A raw streamed request and its chunk iterator (kept alive: dropping it closes the connection)."""
    resp = requests.post(url + "/v1/chat/completions", stream=True, timeout=20, headers=AUTH,
                         json={"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True, **extra})
    return resp, resp.iter_content(chunk_size=None)


def _read_until(chunks: Iterator[bytes], marker: bytes, seen: bytes = b"") -> bytes:
    """Read until ``marker`` has arrived; the test's timeout guards a stream that never sends it."""
    while marker not in seen:
        seen += next(chunks)
    return seen


def _events(body: bytes) -> list[str]:
    return [e for e in body.decode().split("\n\n") if e]


def _content(events: list[str]) -> str:
    payloads = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    return "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices"))


def _wait_for(condition, timeout: float = 5.0) -> bool:
    """Poll a condition of another process or server thread until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ----------------------------------------------------------------- keep-alive pings


def test_silent_site_gets_pings_before_the_answer(make_proxy, fake):
    # The site thinks silently until released: only pings can have been sent before that.
    fake.configure(first_token_delay=60, answer="Worth the wait.", chunk_chars=3)
    server = make_proxy(PING_INTERVAL_SECONDS=0.05)
    resp, chunks = _open(server.url)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    head = _read_until(chunks, PING * 2)
    assert not head.replace(PING, b""), "nothing but pings while the site is silent"
    fake.release_stalls()
    events = _events(head + b"".join(chunks))
    assert events[-1] == "data: [DONE]" and _content(events) == "Worth the wait."
    first_data = next(i for i, e in enumerate(events) if e.startswith("data:"))
    assert set(events[:first_data]) == {": ping"}


def test_sdk_streams_through_pings(make_proxy, fake):
    fake.configure(first_token_delay=60, answer="Pings are comments.", chunk_chars=2)
    client = make_proxy(PING_INTERVAL_SECONDS=0.05).client()
    # create() returns once headers arrive, which the proxy sends with its first ping while the site is silent.
    stream = client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True)
    fake.release_stalls()
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Pings are comments."


def test_image_chat_stream_pings_while_the_picture_is_made(make_proxy, fake):
    fake.configure(first_token_delay=60)  # the site draws silently until released
    server = make_proxy(PING_INTERVAL_SECONDS=0.05)
    resp = requests.post(server.url + "/v1/chat/completions", stream=True, timeout=20, headers=AUTH, json={
        "model": "qwen3.7-plus-image", "stream": True, "messages": [{"role": "user", "content": "a fox"}]})
    assert resp.status_code == 200
    chunks = resp.iter_content(chunk_size=None)
    head = _read_until(chunks, PING * 2)
    assert not head.replace(PING, b""), "nothing but pings while the picture is being made"
    fake.release_stalls()
    events = _events(head + b"".join(chunks))
    assert events[-1] == "data: [DONE]" and "![image](" in _content(events)


def test_pings_while_the_site_pauses_mid_answer(make_proxy, fake):
    fake.configure(answer="abcdef", chunk_chars=2, stall_after_events=3)  # created + two deltas, then silence
    server = make_proxy(PING_INTERVAL_SECONDS=0.05)
    resp, chunks = _open(server.url)
    body = _read_until(chunks, PING)
    assert _content(_events(body)) == "abcd", "the answer so far arrives before the pause"
    fake.release_stalls()
    events = _events(body + b"".join(chunks))
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "stop"


def test_failure_after_pings_is_an_error_event(make_proxy, fake):
    fake.configure(stall_after_events=1)  # response.created, then silence, then the end without an answer
    server = make_proxy(PING_INTERVAL_SECONDS=0.05)
    resp, chunks = _open(server.url)
    assert resp.status_code == 200
    body = _read_until(chunks, PING)
    fake.release_stalls()
    events = _events(body + b"".join(chunks))
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][6:])["error"]
    assert error["code"] == "upstream_empty_response" and set(error) == {"message", "type", "param", "code"}


def test_quick_failures_keep_their_status_with_pings_on(make_proxy, fake):
    fake.configure(fault="rate_limited")
    client = make_proxy(PING_INTERVAL_SECONDS=5).client()
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True)


# ----------------------------------------------------------------- hang-ups


def test_hundreds_of_hang_ups_close_every_upstream_stream(make_proxy, fake):
    assert fake.wait_streams_closed(timeout=5), "streams of earlier tests must have ended"
    fake.configure(answer="x" * 5000, chunk_chars=1, chunk_delay=0.5)  # each would stream for 40 minutes
    server = make_proxy()
    count = 200

    def start(_: int) -> tuple[requests.Response, Iterator[bytes], bytes]:
        resp, chunks = _open(server.url)
        return resp, chunks, next(chunks)

    with ThreadPoolExecutor(max_workers=40) as pool:
        streams = list(pool.map(start, range(count)))
    assert all(first.startswith(b"data: ") for _, _, first in streams)
    assert fake.open_streams == count
    for resp, _, _ in streams:
        resp.close()
    assert fake.wait_streams_closed(timeout=5), f"{fake.open_streams} upstream streams still open"
    assert _wait_for(lambda: _active(server.url) == 0), "every hang-up gives its admission place back"


def test_hang_up_while_the_site_is_silent_stops_the_upstream_read(make_proxy, fake):
    fake.configure(answer="abcdef", chunk_chars=2, stall_after_events=3)
    server = make_proxy(PING_INTERVAL_SECONDS=0.05)
    before = set(threading.enumerate())
    resp, chunks = _open(server.url)
    _read_until(chunks, b'"cd"')
    readers = [t for t in set(threading.enumerate()) - before if t.name.startswith("answer ")]
    assert len(readers) == 1 and fake.stalled_streams == 1, "the stream's reader waits on the silent site"
    resp.close()
    # The proxy notices the hang-up at its next ping and shuts the upstream socket under the waiting reader.
    assert _wait_for(lambda: not any(t.is_alive() for t in readers)), "the reader still waits on the site"


# ----------------------------------------------------------------- admission


def _active(url: str) -> int:
    return requests.get(url + "/health", timeout=5).json()["requests"]["active"]


def test_requests_above_the_cap_get_a_429_at_once(make_proxy, fake):
    fake.configure(answer="abcdefgh", chunk_chars=2, stall_after_events=3)
    server = make_proxy(MAX_CONCURRENT_REQUESTS=2)
    held = [_open(server.url) for _ in range(2)]
    for _, chunks in held:
        assert next(chunks).startswith(b"data: ")

    refused = requests.post(server.url + "/v1/chat/completions", headers={**AUTH, "Origin": "https://app.example"},
                            json={"model": "qwen3.7-plus", "messages": MESSAGES}, timeout=5)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.headers["x-should-retry"] == "true" and refused.headers["Access-Control-Allow-Origin"] == "*"
    error = refused.json()["error"]
    assert error["code"] == "too_many_concurrent_requests" and "MAX_CONCURRENT_REQUESTS" in error["message"]
    with pytest.raises(openai.RateLimitError):
        server.client().chat.completions.create(model="qwen3.7-plus", messages=MESSAGES)
    health = requests.get(server.url + "/health", timeout=5).json()
    assert health["requests"] == {"active": 2, "limit": 2}, "health checks are answered and not counted"

    fake.configure(stall_after_events=None)
    fake.release_stalls()
    for resp, chunks in held:
        assert _events(b"".join(chunks))[-1] == "data: [DONE]"
    # A finished stream gives its place back before its last byte, so the next request gets in at once.
    assert server.client().chat.completions.create(model="qwen3.7-plus", messages=MESSAGES).choices


def test_answers_give_their_place_back_before_the_client_has_them(make_proxy, fake):
    # With room for one request, back-to-back requests on one connection never meet their predecessor.
    server = make_proxy(MAX_CONCURRENT_REQUESTS=1)
    session = requests.Session()
    codes = {session.post(server.url + "/v1/chat/completions", data="{bad", headers=AUTH, timeout=5).status_code
             for _ in range(100)}
    codes |= {session.get(server.url + "/v1/models", headers=AUTH, timeout=5).status_code for _ in range(100)}
    assert codes == {400, 200}


def test_failed_requests_give_their_place_back(make_proxy, fake):
    server = make_proxy(MAX_CONCURRENT_REQUESTS=1)
    fake.configure(fault="http_500")
    with pytest.raises(openai.InternalServerError):
        server.client().chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True)
    fake.configure(fault=None)
    assert server.client().chat.completions.create(model="qwen3.7-plus", messages=MESSAGES).choices
    assert _active(server.url) == 0


# ----------------------------------------------------------------- settings


@pytest.mark.parametrize(("key", "value"), [
    ("PING_INTERVAL_SECONDS", "0"), ("PING_INTERVAL_SECONDS", "soon"), ("MAX_CONCURRENT_REQUESTS", "-5"),
    ("MAX_CONCURRENT_REQUESTS", "1.5"),
])
def test_bad_serving_values_name_the_key(key, value):
    with pytest.raises(ConfigError) as info:
        load_settings({key: value, "CONFIG_FILE": ""}, environ={})
    assert str(info.value).startswith(key)


def test_upstream_pool_follows_the_request_cap_unless_set():
    assert load_settings({"CONFIG_FILE": "", "MAX_CONCURRENT_REQUESTS": 300}, environ={}).UPSTREAM_POOL_SIZE == 300
    settings = load_settings({"CONFIG_FILE": ""}, environ={"MAX_CONCURRENT_REQUESTS": "300", "UPSTREAM_POOL_SIZE": "40"})
    assert settings.UPSTREAM_POOL_SIZE == 40


def test_environment_proxies_are_read_once_per_site_and_honour_no_proxy(monkeypatch):
    from identity_pool import new_session

    url = "https://chat.qwen.ai/api/v2/chats/new"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    for name in ("NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    session = new_session(4)
    assert session.merge_environment_settings(url, {}, None, None, None)["proxies"]["https"] == "http://proxy.example:3128"
    monkeypatch.setenv("NO_PROXY", "chat.qwen.ai")
    assert session.merge_environment_settings(url, {}, None, None, None)["proxies"], "read once, not on every call"
    fresh = new_session(4).merge_environment_settings(url, {}, None, None, None)
    assert "https" not in fresh["proxies"] and fresh["verify"] is True


# ----------------------------------------------------------------- hang-ups while the site is silent (issue 11 §5)


def test_a_hang_up_while_the_site_thinks_reaches_the_site_within_two_seconds(make_proxy, fake):
    """The site is silent for 30 s before its first token; the client gives up after 1 s (with the default
    15 s pings, the proxy used to notice only at the next one, and the site kept generating)."""
    assert fake.wait_streams_closed(timeout=5), "streams of earlier tests must have ended"
    fake.configure(first_token_delay=30.0)
    server = make_proxy()
    client = server.client().with_options(timeout=openai.Timeout(1.0, connect=2.0))
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True)
    gave_up = time.monotonic()
    assert fake.open_streams == 1, "the upstream stream was open while the client waited"
    assert fake.wait_streams_closed(timeout=3), "the site still streams to a client that left"
    assert time.monotonic() - gave_up < 2.5
    assert _wait_for(lambda: _active(server.url) == 0), "the hang-up gives its admission place back"
    [account] = requests.get(server.url + "/health", timeout=5).json()["accounts"]["accounts"]
    assert (account["state"], account["failed"], account["in_flight"]) == ("healthy", 0, 0)


def test_a_hang_up_while_the_site_pauses_mid_answer_reaches_the_site_within_two_seconds(make_proxy, fake):
    assert fake.wait_streams_closed(timeout=5), "streams of earlier tests must have ended"
    fake.configure(answer="ab", chunk_chars=1, chunk_delay=30.0)  # "a", then 30 s of silence
    server = make_proxy()
    stream = server.client().chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content == "a"
    stream.close()
    gave_up = time.monotonic()
    assert fake.wait_streams_closed(timeout=3), "the site still streams to a client that left"
    assert time.monotonic() - gave_up < 2.5


def test_a_non_stream_request_abandoned_while_the_site_thinks_is_closed_upstream(make_proxy, fake):
    assert fake.wait_streams_closed(timeout=5), "streams of earlier tests must have ended"
    fake.configure(first_token_delay=30.0)
    server = make_proxy()
    with pytest.raises(openai.APITimeoutError):
        server.client().with_options(timeout=openai.Timeout(1.0, connect=2.0)).chat.completions.create(
            model="qwen3.7-plus", messages=MESSAGES)
    gave_up = time.monotonic()
    assert fake.wait_streams_closed(timeout=3) and time.monotonic() - gave_up < 2.5


def test_a_slow_but_present_client_is_not_taken_for_gone(make_proxy, fake):
    """Five seconds of silence with the client still connected: no false hang-up, the answer arrives whole."""
    fake.configure(answer="late answer", first_token_delay=2.5)
    server = make_proxy()
    reply = server.client().chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in reply if c.choices) == "late answer"
