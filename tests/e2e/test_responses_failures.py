"""Every failure of the site and of the request, as a user of the ``openai`` SDK's ``responses.*`` meets it."""

from __future__ import annotations

import json

import openai
import pytest
import requests
from hypothesis import HealthCheck, given, settings

from tests.helpers import PRE_STREAM
from tests.helpers import API_KEY, RESPONSES_BODY

MODEL = "qwen3.7-plus"


def raw(proxy, body, **kwargs):
    return requests.post(proxy.url + "/v1/responses", json=body, timeout=20, stream=True,
                         headers={"Authorization": f"Bearer {API_KEY}"}, **kwargs)


def stream_events(client, model=MODEL, **kwargs):
    events = []
    with client.responses.stream(model=model, input="hi", **kwargs) as stream:
        events.extend(stream)
        with pytest.raises(RuntimeError, match="response.completed"):
            stream.get_final_response()
    return events


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", sorted(PRE_STREAM))
def test_fault_before_any_output_keeps_its_status(client, fake, fault, stream):
    cls, status, code, words = PRE_STREAM[fault]
    fake.configure(fault=fault)
    with pytest.raises(cls) as info:
        result = client.responses.create(model=MODEL, input="hi", stream=stream)
        list(result) if stream else None
    error = info.value
    assert error.status_code == status and (code is None or error.code == code)
    assert words.lower() in error.message.lower() and "<" not in error.message
    assert error.response.headers["x-should-retry"] in {"true", "false"}


def test_rate_limit_says_when_to_retry(client, fake):
    fake.configure(fault="rate_limited")
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(model=MODEL, input="hi")
    assert info.value.response.headers["Retry-After"] == "10800"


def _failed(events):
    error, failed = events[-2:]
    assert error.type == "error" and failed.type == "response.failed"
    assert failed.response.status == "failed" and failed.response.error.code == error.code
    assert failed.response.error.message == error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return failed


def test_error_after_content_ends_with_error_and_response_failed(client, fake):
    fake.configure(fault="error_after_content", answer="Partial answer that is cut off", chunk_chars=4)
    events = stream_events(client)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    failed = _failed(events)
    assert text and "internal_error" in failed.response.error.code
    [message] = failed.response.output
    assert message.status == "incomplete" and message.content[0].text == text


def test_broken_connection_mid_stream(client, fake):
    fake.configure(answer="one two three four five six", chunk_chars=4, disconnect_after_events=3)
    failed = _failed(stream_events(client))
    assert failed.response.error.code == "upstream_stream_broken" and "broke off" in failed.response.error.message


def test_stall_mid_stream(make_proxy, fake):
    fake.configure(answer="abcdefghijkl", chunk_chars=2, stall_after_events=3)
    client = make_proxy(READ_TIMEOUT=0.5).client()
    failed = _failed(stream_events(client))
    assert "stopped sending" in failed.response.error.message


FORMAT = {"format": {"type": "json_schema", "name": "x", "strict": True,
                     "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_model_contract_broken_twice_before_output_is_a_502(client, fake, stream):
    fake.script("No JSON here.", "Still none.")
    with pytest.raises(openai.InternalServerError) as info:
        result = client.responses.create(model=MODEL, input="hi", text=FORMAT, stream=stream)
        list(result) if stream else None
    assert info.value.code == "model_output_invalid" and "response_format" in info.value.message


def test_model_contract_broken_twice_after_thinking_fails_the_stream(client, fake):
    fake.configure(thinking=["Let me think."])
    fake.script("No JSON here.", "Still none.")
    events = stream_events(client, model=MODEL + "-thinking", text=FORMAT)
    assert events[2].item.type == "reasoning"
    assert _failed(events).response.error.code == "model_output_invalid"


def test_error_after_content_without_stream_is_a_502(client, fake):
    fake.configure(fault="error_after_content")
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model=MODEL, input="hi")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_x")


def test_thinking_without_an_answer_fails_the_response(client, fake):
    fake.configure(answer="", thinking=["I thought about it."])
    events = stream_events(client, model=MODEL + "-thinking")
    assert events[2].item.type == "reasoning"
    assert _failed(events).response.error.code == "upstream_empty_response"
    with pytest.raises(openai.InternalServerError) as info:
        client.responses.create(model=MODEL + "-thinking", input="hi")
    assert info.value.code == "upstream_empty_response"


def test_slow_first_output_is_kept_alive_with_pings(make_proxy, fake):
    fake.configure(first_token_delay=0.6, answer="Late.")
    proxy = make_proxy(PING_INTERVAL_SECONDS=0.2)
    resp = raw(proxy, {"model": MODEL, "input": "hi", "stream": True})
    body = resp.content.decode()
    assert resp.status_code == 200 and ": ping\n\n" in body and body.rstrip().endswith("}")
    assert json.loads(body.rstrip().rsplit("data: ", 1)[1])["type"] == "response.completed"


def test_client_hang_up_closes_the_upstream_stream(proxy, fake):
    assert fake.wait_streams_closed(timeout=5), "streams of earlier tests must have ended"
    fake.configure(answer="x" * 3000, chunk_chars=1, chunk_delay=0.01)
    resp = raw(proxy, {"model": MODEL, "input": "hi", "stream": True})
    chunks = resp.iter_content(chunk_size=None)
    assert next(chunks).startswith(b"event: response.created")
    assert fake.open_streams == 1
    resp.close()
    assert fake.wait_streams_closed(timeout=5)


# ------------------------------------------------------------------ the caller's own mistakes


BAD = [
    ({"input": "hi"}, "model"),
    ({"model": MODEL}, "input"),
    ({"model": MODEL, "input": []}, "input"),
    ({"model": MODEL, "input": 5}, "input"),
    ({"model": MODEL, "input": [5]}, "input[0]"),
    ({"model": MODEL, "input": [{"type": "message", "role": "tool", "content": "x"}]}, "input[0].role"),
    ({"model": MODEL, "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_video"}]}]}, "input[0].content[0]"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
     "input[0].content[0]"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0]"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}]},
     "input[0].content[0]"),
    ({"model": MODEL, "input": [{"type": "function_call", "call_id": "c"}]}, "input[0].name"),
    ({"model": MODEL, "input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}, "input[0].output"),
    ({"model": MODEL, "input": [{"role": "system", "content": "only rules"}]}, "input"),
    ({"model": MODEL, "input": "hi", "tools": {}}, "tools"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": []}]},
     "tools[0].parameters"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}, {"type": "function", "name": "f"},
                                              {"type": "function", "name": "f"}]}, "tools[2]"),
    ({"model": MODEL, "input": "hi", "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": MODEL, "input": "hi", "tool_choice": {"type": "allowed_tools", "mode": "none", "tools": []}},
     "tool_choice.mode"),
    ({"model": MODEL, "input": "hi", "tool_choice": {"type": "allowed_tools", "tools": "all"}}, "tool_choice.tools"),
    ({"model": MODEL, "input": "hi", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "xml"}}}, "text.format"),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"model": MODEL, "input": "hi", "reasoning": "high"}, "reasoning"),
    ({"model": MODEL, "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": MODEL, "input": "hi", "stream": "yes"}, "stream"),
    ({"model": MODEL, "input": "hi", "instructions": ["x"]}, "instructions"),
    ({"model": MODEL, "input": "hi", "previous_response_id": 7}, "previous_response_id"),
    ({"model": MODEL, "input": "hi", "background": True}, "background"),
    ({"model": MODEL + "-image", "input": "draw"}, "model"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[p for _, p in BAD])
def test_bad_requests_are_openai_400s_naming_the_field(client, fake, body, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**body)
    assert info.value.param == param and info.value.type == "invalid_request_error"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert not fake.requests_to("/api/v2/chat/completions")


def test_unknown_model_and_key(client, proxy, fake):
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="qwen-nope", input="hi")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        proxy.client(api_key="sk-wrong").responses.create(model=MODEL, input="hi")
    with pytest.raises(openai.AuthenticationError):
        proxy.client(api_key="sk-wrong").responses.retrieve("resp_x")


def test_generated_bodies_get_4xx_never_5xx(proxy, fake):
    fake.configure(answer="ok")

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=RESPONSES_BODY)
    def check(body):
        resp = raw(proxy, body)
        content = resp.content
        assert resp.status_code < 500, (body, content[:300])
        if resp.status_code >= 400:
            assert set(json.loads(content)["error"]) == {"message", "type", "param", "code"}, body

    check()
