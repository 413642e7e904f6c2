"""Every failure of the site, as the ``openai`` SDK user meets it: a typed exception with a useful message."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from tests.helpers import API_KEY, PRE_STREAM
from tests.fake_qwen import FAULTS

MESSAGES = [{"role": "user", "content": "hi"}]



def test_every_emulator_fault_has_an_expectation():
    assert set(PRE_STREAM) | {"error_after_content"} == set(FAULTS)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", sorted(PRE_STREAM))
def test_fault_before_any_output(client, fake, fault, stream):
    cls, status, code, words = PRE_STREAM[fault]
    fake.configure(fault=fault)
    with pytest.raises(cls) as info:
        client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=stream)
    error = info.value
    assert error.status_code == status
    if code:
        assert error.code == code
    assert words.lower() in error.message.lower()
    assert "<" not in error.message, "no HTML may leak into an error"
    assert error.response.headers["x-should-retry"] in {"true", "false"}
    retry_after = error.response.headers.get("Retry-After")
    if retry_after is not None and int(retry_after) > 2:  # a long wait is for schedulers, not the SDK's loop
        assert error.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(("fault", "retry_after"), [("rate_limited", "10800"), ("x5sec", "120"), ("waf_html", "120")])
def test_rate_limits_say_when_to_retry(client, fake, fault, retry_after):
    fake.configure(fault=fault)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES)
    assert info.value.response.headers["Retry-After"] == retry_after


@pytest.mark.parametrize("fault", ["unauthorized", "http_503"])
def test_faults_on_chat_creation(client, fake, fault):
    fake.configure(fault=fault, fault_endpoint="chats_new")
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES)
    assert info.value.status_code == PRE_STREAM[fault][1]
    assert not fake.requests_to("/api/v2/chat/completions")


def test_permanent_failures_tell_the_sdk_not_to_retry(client, fake):
    fake.configure(fault="stream_data_inspection")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES)
    assert info.value.response.headers["x-should-retry"] == "false"


def _raw_stream(proxy, **body):
    return requests.post(proxy.url + "/v1/chat/completions", stream=True, timeout=20,
                         headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True, **body})


def test_error_after_content_ends_the_stream_with_an_error_event(client, proxy, fake):
    fake.configure(fault="error_after_content", answer="Partial answer that is cut off", chunk_chars=4)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) and "internal_error" in info.value.message
    events = _raw_stream(proxy).content.decode().strip().split("\n\n")
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][6:])["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "upstream_error"


def test_error_after_content_without_stream_is_a_502(client, fake):
    fake.configure(fault="error_after_content")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES)


def test_broken_connection_mid_stream(client, fake):
    fake.configure(answer="one two three four five six", chunk_chars=4, disconnect_after_events=3)
    with pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True):
            pass
    assert "broke off" in info.value.message


def test_broken_connection_before_output_is_a_502(client, fake):
    fake.configure(disconnect_after_events=1)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES)
    assert info.value.code == "upstream_stream_broken"


def test_stall_before_output_is_a_504(make_proxy, fake):
    fake.configure(stall_after_events=1)
    client = make_proxy(READ_TIMEOUT=0.5).client()
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES)
    assert info.value.status_code == 504 and "READ_TIMEOUT" in info.value.message


def test_stall_mid_stream_ends_with_error_event(make_proxy, fake):
    fake.configure(answer="abcdefghijkl", chunk_chars=2, stall_after_events=3)
    client = make_proxy(READ_TIMEOUT=0.5).client()
    with pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True):
            pass
    assert "stopped sending" in info.value.message


def test_client_hang_up_closes_the_upstream_stream(proxy, fake):
    # The upstream would stream for 30 s; only a propagated hang-up ends it within the wait.
    assert fake.wait_streams_closed(timeout=5), "streams of earlier tests must have ended"
    fake.configure(answer="x" * 3000, chunk_chars=1, chunk_delay=0.01)
    resp = _raw_stream(proxy)
    chunks = resp.iter_content(chunk_size=None)
    assert next(chunks).startswith(b"data: ") and next(chunks).startswith(b"data: ")
    assert fake.open_streams == 1
    resp.close()
    assert fake.wait_streams_closed(timeout=5)


def test_unreachable_site(make_proxy, fake):
    client = make_proxy(upstream="http://127.0.0.1:9").client()
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES)
    assert info.value.status_code == 503 and "QWEN_BASE_URL" in info.value.message


def test_thinking_without_an_answer_is_not_a_silent_empty_reply(client, fake):
    fake.configure(answer="", thinking=["I thought about it."])
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="qwen3.7-plus-thinking", messages=MESSAGES)
    assert info.value.code == "upstream_empty_response"
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="qwen3.7-plus-thinking", messages=MESSAGES, stream=True):
            received.append(chunk)
    assert received and "without an answer" in info.value.message
