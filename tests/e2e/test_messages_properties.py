"""Generated Messages bodies against the live endpoints: an answer or a Messages-shaped 4xx, never a 5xx."""

from __future__ import annotations

import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.helpers import API_KEY

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
TEXT = st.text(max_size=40)
BLOCK = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT | JSON}),
    st.fixed_dictionaries({"type": st.just("image"), "source": st.fixed_dictionaries(
        {"type": st.sampled_from(["base64", "url", "file"]), "media_type": st.sampled_from(["image/png", "x/y"]),
         "data": st.sampled_from(["iVBORw0KGgo=", "not base64!", ""]), "url": TEXT})}),
    st.fixed_dictionaries({"type": st.just("document"), "source": st.fixed_dictionaries(
        {"type": st.sampled_from(["base64", "text", "content", "url"]), "media_type": TEXT, "data": TEXT,
         "content": JSON})}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": TEXT | JSON, "name": TEXT | JSON, "input": JSON}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": TEXT | JSON, "is_error": JSON,
                           "content": TEXT | st.lists(JSON, max_size=3)}),
    st.fixed_dictionaries({"type": TEXT}),
    JSON,
)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]) | JSON,
                                 "content": TEXT | st.lists(BLOCK, max_size=4) | JSON})
BODY = st.fixed_dictionaries(
    {"model": st.sampled_from(["claude-sonnet-4-5", "qwen3.7-plus", "qwen3.7-plus-thinking", "nope"]) | JSON,
     "messages": st.lists(MESSAGE, max_size=4) | JSON},
    optional={
        "max_tokens": st.integers(-1, 50) | JSON,
        "system": TEXT | st.lists(BLOCK, max_size=2) | JSON,
        "stop_sequences": st.lists(TEXT, max_size=3) | JSON,
        "thinking": st.fixed_dictionaries({"type": st.sampled_from(["enabled", "disabled", "adaptive"]) | JSON,
                                           "budget_tokens": st.integers(-1, 4096) | JSON}) | JSON,
        "tools": st.lists(st.fixed_dictionaries({"name": TEXT | JSON, "input_schema": JSON | st.just(
            {"type": "object"})}, optional={"type": TEXT}), max_size=3) | JSON,
        "tool_choice": st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool", "none"]) | JSON},
                                             optional={"name": TEXT, "disable_parallel_tool_use": JSON}) | JSON,
        "metadata": JSON,
        "stream": st.booleans() | JSON,
    },
)
#: Bodies close to what clients send, so that answers and streams are exercised as much as refusals.
PLAUSIBLE = st.fixed_dictionaries(
    {"model": st.sampled_from(["claude-sonnet-4-5", "claude-haiku-4-5", "qwen3.7-plus", "qwen3.7-plus-thinking"]),
     "max_tokens": st.integers(1, 4096),
     "messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": TEXT.filter(str.strip) | st.lists(
         st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), min_size=1, max_size=3)}), min_size=1,
         max_size=3)},
    optional={
        "stream": st.booleans(),
        "system": TEXT | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2),
        "stop_sequences": st.lists(st.text(min_size=1, max_size=5), max_size=3),
        "thinking": st.sampled_from([{"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"},
                                     {"type": "adaptive"}]),
        "metadata": st.fixed_dictionaries({"user_id": TEXT}),
        "tools": st.just([{"name": "LS", "input_schema": {"type": "object", "properties": {}}}]),
        "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "none"}]),
    },
)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


def check(resp: requests.Response) -> None:
    event(f"status {resp.status_code}")
    if resp.status_code == 200:
        return
    error = resp.json()
    assert error["type"] == "error" and error["error"]["message"], resp.text
    # Only the model may break the tool contract (an emulator answer without the forced call): 502.
    assert resp.status_code < 500 or "did not comply" in error["error"]["message"], resp.text


@SETTINGS
@given(body=PLAUSIBLE | BODY)
def test_generated_message_bodies(proxy, fake, body):
    fake.configure(answer="ok")
    with requests.post(proxy.url + "/v1/messages", json=body, headers={"x-api-key": API_KEY}, timeout=20) as resp:
        resp.content  # a stream is read whole: an error event would be a failure too
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            event("stream")
            assert b"event: error" not in resp.content and resp.content.rstrip().endswith(b'{"type":"message_stop"}')
        else:
            check(resp)


@SETTINGS
@given(body=PLAUSIBLE | BODY)
def test_generated_count_tokens_bodies(proxy, fake, body):
    resp = requests.post(proxy.url + "/v1/messages/count_tokens", json=body, headers={"x-api-key": API_KEY},
                         timeout=20)
    check(resp)
    if resp.status_code == 200:
        assert resp.json()["input_tokens"] >= 1
