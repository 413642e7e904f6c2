"""The Anthropic Messages API end to end: the official ``anthropic`` SDK → the proxy → the emulator's site."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import anthropic
import pytest
import requests

from tests.fake_qwen import make_jwt
from tests.helpers import API_KEY, MediaHost
from transform.tool_prompts import format_call

COMPLETIONS = "/api/v2/chat/completions"
ASK = [{"role": "user", "content": "Say hello."}]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16
PDF = b"%PDF-1.7\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 20


def sent(fake) -> list[dict]:
    """The user messages the site received, in order."""
    return [r.json["messages"][0] for r in fake.requests_to(COMPLETIONS)]


def test_create_answers_a_message(claude, fake):
    fake.configure(answer="Hello from fake Qwen.")
    message = claude.messages.create(model="claude-sonnet-4-5-20250929", max_tokens=1024, messages=ASK,
                                     metadata={"user_id": "user-1"}, extra_body={"temperature": 0.2, "top_k": 5})
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.model == "claude-sonnet-4-5-20250929", "the requested name is echoed"
    assert [(b.type, b.text) for b in message.content] == [("text", "Hello from fake Qwen.")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message._request_id.startswith("req_")
    assert message.usage.input_tokens == 812 and message.usage.output_tokens > 0
    (request,) = fake.requests_to(COMPLETIONS)
    assert request.json["model"] == "qwen3.7-plus", "Claude names run on the default model"


def test_the_beta_surface_claude_code_uses(claude, fake):
    """Claude Code calls POST /v1/messages?beta=true with anthropic-beta flags."""
    message = claude.beta.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK,
                                          betas=["interleaved-thinking-2025-05-14", "claude-code-20250219"])
    assert message.content[0].text == "Hello from fake Qwen." and message.stop_reason == "end_turn"
    with claude.beta.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=ASK) as stream:
        assert stream.get_final_message().content[0].text == "Hello from fake Qwen."


def test_api_key_and_bearer_token_are_both_accepted(proxy, fake):
    for client in (anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, max_retries=0),
                   anthropic.Anthropic(base_url=proxy.url, auth_token=API_KEY, max_retries=0)):
        assert client.messages.create(model="qwen3.7-plus", max_tokens=50, messages=ASK).content
    wrong = anthropic.Anthropic(base_url=proxy.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(model="qwen3.7-plus", max_tokens=50, messages=ASK)
    assert info.value.body["error"]["type"] == "authentication_error" and "sk-wrong" not in str(info.value.body)


@pytest.mark.parametrize("header", ["api_key", "auth_token"])
def test_client_mode_takes_the_callers_account_from_either_header(make_proxy, fake, header):
    proxy = make_proxy(SERVER_MODE=False, COOKIE="")
    own = make_jwt("claude-code-user-7")
    client = anthropic.Anthropic(base_url=proxy.url, max_retries=0, **{header: f"{API_KEY};{own};ssxmod_itna=abc"})
    assert client.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=ASK).content
    assert f"token={own}" in fake.requests_to(COMPLETIONS)[-1].headers["Cookie"]
    wrong = anthropic.Anthropic(base_url=proxy.url, max_retries=0, **{header: f"sk-wrong;{own};"})
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=ASK)


def test_model_map_setting(make_proxy, fake):
    proxy = make_proxy(ANTHROPIC_MODEL_MAP={"claude-opus-*": "qwen3.8-max-thinking"})
    client = anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, max_retries=0)
    client.messages.create(model="claude-opus-4-1-20250805", max_tokens=50, messages=ASK)
    client.messages.create(model="claude-3-5-haiku-20241022", max_tokens=50, messages=ASK)
    client.messages.create(model="qwen3.8-max", max_tokens=50, messages=ASK)
    models = [r.json["model"] for r in fake.requests_to(COMPLETIONS)]
    assert models == ["qwen3.8-max", "qwen3.7-plus", "qwen3.8-max"]
    assert sent(fake)[0]["feature_config"]["thinking_mode"] == "Thinking", "the mapped suffix applies"


def test_stream_accumulates_to_the_final_message(claude, fake):
    fake.configure(answer="one two three four five", chunk_chars=3)
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=1024, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three four five" == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.input_tokens == 812 and final.usage.output_tokens > 0


def raw_events(proxy, body: dict, **headers: str) -> list[tuple[str, dict]]:
    """(event name, data) pairs of a raw Messages stream, as the SDK's SSE decoder reads them."""
    resp = requests.post(proxy.url + "/v1/messages", json={"stream": True, **body}, timeout=20,
                         headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01", **headers})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = []
    for frame in resp.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
        assert events[-1][0] == events[-1][1]["type"]
    return events


def test_event_sequence_with_thinking(proxy, fake):
    fake.configure(thinking=["Weighing it up."], answer="Hello there.")
    body = {"model": "claude-opus-4-1", "max_tokens": 4096, "messages": ASK,
            "thinking": {"type": "enabled", "budget_tokens": 2048}}
    names = [name for name, _ in raw_events(proxy, body)]
    assert names[:2] == ["message_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    opened = [data for name, data in raw_events(proxy, body) if name == "content_block_start"]
    assert [(d["index"], d["content_block"]["type"]) for d in opened] == [(0, "thinking"), (1, "text")]
    config = sent(fake)[-1]["feature_config"]
    assert config["thinking_enabled"] is True and config["thinking_budget"] == 2048


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_thinking_on_gives_a_signed_thinking_block(claude, fake, stream):
    fake.configure(thinking=["First I consider the question."], answer="42")
    kwargs = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": ASK,
              "thinking": {"type": "enabled", "budget_tokens": 1024}}
    if stream:
        with claude.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**kwargs)
    thinking, text = message.content
    assert thinking.type == "thinking" and "consider the question" in thinking.thinking
    assert thinking.signature, "a signature is present, so clients can send the block back"
    assert text.type == "text" and text.text == "42"


def test_thinking_off_switches_the_site_to_fast(claude, fake):
    message = claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK,
                                     thinking={"type": "disabled"})
    assert [b.type for b in message.content] == ["text"]
    config = sent(fake)[-1]["feature_config"]
    assert config["thinking_enabled"] is False and config["thinking_mode"] == "Fast"


@pytest.mark.parametrize(("model", "thinking", "shown"), [
    ("claude-sonnet-4-5", None, False),  # not asked: the site may think in its Auto gear, the answer has none
    ("claude-sonnet-4-5", {"type": "adaptive"}, True),
    ("qwen3.7-plus-thinking", None, True),  # the model id asks for it
])
def test_thinking_blocks_only_when_asked_for(claude, fake, model, thinking, shown):
    fake.configure(thinking=["Unrequested musing."], answer="Plain answer.")
    extra = {"thinking": thinking} if thinking else {}
    message = claude.messages.create(model=model, max_tokens=1000, messages=ASK, **extra)
    assert [b.type for b in message.content] == (["thinking", "text"] if shown else ["text"])
    assert message.content[-1].text == "Plain answer."


def test_hidden_thinking_still_keeps_the_stream_alive(make_proxy, fake):
    fake.configure(thinking=["deliberating " * 12], thinking_style="think", chunk_chars=2, chunk_delay=0.02,
                   answer="Done.")
    proxy = make_proxy(PING_INTERVAL_SECONDS=0.2)
    events = raw_events(proxy, {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": ASK})
    names = [name for name, _ in events]
    assert names.count("ping") >= 3 and "thinking_delta" not in str(events) and names[-1] == "message_stop"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_prefill_is_continued_not_repeated(claude, fake, stream):
    fake.configure(answer='{"city": "Paris", "population": 2102650}', chunk_chars=3)
    kwargs = {"model": "claude-sonnet-4-5", "max_tokens": 100,
              "messages": [{"role": "user", "content": "Paris as JSON."}, {"role": "assistant", "content": "{"}]}
    if stream:
        with claude.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**kwargs)
    assert json.loads("{" + message.content[0].text) == {"city": "Paris", "population": 2102650}
    assert sent(fake)[-1]["content"].endswith("Start your reply with exactly the following text, and continue it:\n{")


# ------------------------------------------------------------------ tools, the way Claude Code uses them

SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering tasks. "
     * 60, "cache_control": {"type": "ephemeral"}},
]
TOOL_NAMES = ["Task", "Bash", "Glob", "Grep", "LS", "Read", "Edit", "MultiEdit", "Write", "NotebookEdit",
              "WebFetch", "TodoWrite", "WebSearch", "BashOutput", "KillBash", "ExitPlanMode"]
TOOLS = [{"name": name, "description": f"The {name} tool of the agent.",
          "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                           "required": ["file_path"], "additionalProperties": False,
                           "$schema": "http://json-schema.org/draft-07/schema#"}} for name in TOOL_NAMES]


def test_claude_code_tool_loop(claude, fake):
    """Read a missing file (an error result), then the right one, then answer: three turns, one upstream chat."""
    fake.configure(chunk_chars=5)
    fake.script("I will read it.\n" + format_call("Read", {"file_path": "/src/app.py"}),
                format_call("Read", {"file_path": "/src/main.py"}),
                "The file prints hello.")
    messages: list[dict] = [{"role": "user", "content": [{"type": "text", "text": "What does main do?"}]}]
    kwargs = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 32000, "system": SYSTEM, "tools": TOOLS,
              "metadata": {"user_id": "user_abc_account__session_1"}}
    with claude.messages.stream(messages=messages, **kwargs) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    text, call = first.content
    assert text.type == "text" and text.text.strip() == "I will read it."
    assert call.type == "tool_use" and call.id.startswith("toolu_") and call.name == "Read"
    assert call.input == {"file_path": "/src/app.py"}
    messages += [{"role": "assistant", "content": [b.to_dict() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "is_error": True,
                                               "content": "<tool_use_error>File does not exist.</tool_use_error>"}]}]
    second = claude.messages.create(messages=messages, **kwargs)
    (call2,) = second.content
    assert second.stop_reason == "tool_use" and call2.input == {"file_path": "/src/main.py"}
    messages += [{"role": "assistant", "content": [b.to_dict() for b in second.content]},
                 {"role": "user", "content": [
                     {"type": "tool_result", "tool_use_id": call2.id,
                      "content": [{"type": "text", "text": "print('hello')"}]},
                     {"type": "text", "text": "Answer briefly."}]}]
    with claude.messages.stream(messages=messages, **kwargs) as stream:
        third = stream.get_final_message()
    assert third.stop_reason == "end_turn" and third.content[0].text == "The file prints hello."
    prompts = [m["content"] for m in sent(fake)]
    assert "- Read({file_path: string}): The Read tool of the agent." in prompts[0]
    assert all(f"- {name}(" in prompts[0] for name in TOOL_NAMES) and "You are Claude Code" in prompts[0]
    assert f'<tool_response name="Read" tool_call_id="{call.id}">' in prompts[1]
    assert "[the tool reported an error]" in prompts[1] and "File does not exist." in prompts[1]
    assert "print('hello')" in prompts[2] and "Answer briefly." in prompts[2]
    assert len({r.query["chat_id"] for r in fake.requests_to(COMPLETIONS)}) == 1, "one upstream chat, continued"
    assert "# Tools" not in prompts[1], "only the new messages go into the continued chat"


def test_streamed_tool_use_sends_input_json_deltas(proxy, fake):
    fake.script(format_call("Bash", {"file_path": "ls -la"}) + format_call("Glob", {"file_path": "*.py"}))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": ASK, "tools": TOOLS}
    events = raw_events(proxy, body)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [(b["type"], b["name"], b["input"]) for b in starts] == [("tool_use", "Bash", {}), ("tool_use", "Glob", {})]
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert [json.loads(d["partial_json"]) for d in deltas] == [{"file_path": "ls -la"}, {"file_path": "*.py"}]
    assert [d["delta"]["stop_reason"] for n, d in events if n == "message_delta"] == ["tool_use"]


@pytest.mark.parametrize(("choice", "rule"), [
    ({"type": "any"}, "You must call at least one function"),
    ({"type": "tool", "name": "Grep"}, "You must call the function Grep"),
    ({"type": "none"}, "Do not call any function"),
    ({"type": "auto", "disable_parallel_tool_use": True}, "Call at most one function"),
])
def test_tool_choice(claude, fake, choice, rule):
    fake.script(format_call("Grep", {"file_path": "x"}) if choice["type"] != "none" else "No tools needed.")
    message = claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK, tools=TOOLS,
                                     tool_choice=choice)
    assert rule in sent(fake)[-1]["content"]
    assert message.stop_reason == ("end_turn" if choice["type"] == "none" else "tool_use")


# ------------------------------------------------------------------ media


@pytest.fixture()
def host() -> Iterator[MediaHost]:
    with MediaHost() as server:
        yield server


def test_base64_image(claude, fake):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(PNG).decode()}}
    claude.messages.create(model="claude-sonnet-4-5", max_tokens=100,
                           messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}])
    message = sent(fake)[-1]
    (entry,) = message["files"]
    assert entry["type"] == "image" and entry["file_type"] == "image/png" and message["content"] == "What is this?"


def test_images_on_a_blind_model_fall_back_and_say_so(make_proxy, fake):
    proxy = make_proxy(VISION_FALLBACK_MODEL="qwen3.7-plus", ANTHROPIC_MODEL_MAP="claude-opus-*=qwen3.8-max")
    client = anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, max_retries=0)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(PNG).decode()}}
    raw = client.messages.with_raw_response.create(model="claude-opus-4-1", max_tokens=100,
                                                   messages=[{"role": "user", "content": [image]}])
    assert raw.headers["X-Model-Fallback"] == raw.headers["X-Qwen-Model"] == "qwen3.7-plus"
    assert raw.parse().model == "claude-opus-4-1"
    text = client.messages.with_raw_response.create(model="claude-opus-4-1", max_tokens=100, messages=ASK)
    assert text.headers["X-Qwen-Model"] == "qwen3.8-max" and "X-Model-Fallback" not in text.headers


def test_url_image(make_proxy, fake, host):
    url = host.serve("/shots/screen.png", PNG)
    proxy = make_proxy(ALLOW_PRIVATE_URLS=True)
    client = anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, max_retries=0)
    image = {"type": "image", "source": {"type": "url", "url": url}}
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                                messages=[{"role": "user", "content": [{"type": "text", "text": "Look"}, image]}]) as s:
        assert s.get_final_message().content[0].text
    (entry,) = sent(fake)[-1]["files"]
    assert entry["name"] == "screen.png" and entry["file_type"] == "image/png"


def test_image_in_a_tool_result_reaches_the_site(claude, fake):
    """Claude Code's Read tool returns screenshots as image blocks inside tool_result."""
    fake.script(format_call("Read", {"file_path": "/shot.png"}), "A blue square.")
    history = [{"role": "user", "content": "Describe /shot.png"}]
    first = claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=history, tools=TOOLS)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(PNG).decode()}}
    history += [{"role": "assistant", "content": [b.to_dict() for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[0].id,
                                              "content": [image]}]}]
    assert claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=history,
                                  tools=TOOLS).content[0].text == "A blue square."
    (entry,) = sent(fake)[-1]["files"]
    assert entry["type"] == "image"


def test_pdf_document_and_text_document(claude, fake):
    pdf = {"type": "document", "title": "spec.pdf",
           "source": {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(PDF).decode()}}
    note = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Meeting at noon."}}
    claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=[
        {"role": "user", "content": [pdf, note, {"type": "text", "text": "Summarise."}]}])
    message = sent(fake)[-1]
    (entry,) = message["files"]
    assert entry["name"] == "spec.pdf" and entry["file_class"] == "document"
    assert "Meeting at noon." in message["content"] and "Summarise." in message["content"]


# ------------------------------------------------------------------ stop sequences, max_tokens, count_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_stop_sequences_cut_the_answer(claude, fake, stream):
    fake.configure(answer="Step one.\nEND\nStep two that must not be seen." + " more" * 500, chunk_chars=2)
    kwargs = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": ASK, "stop_sequences": ["###", "\nEND"]}
    if stream:
        with claude.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**kwargs)
    assert message.content[0].text == "Step one."
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "\nEND"
    assert fake.wait_streams_closed(timeout=5), "the rest of the upstream answer is not read"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_max_tokens_gives_stop_reason_max_tokens(claude, fake, stream):
    fake.configure(answer="word " * 400, chunk_chars=8)
    kwargs = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": ASK}
    if stream:
        with claude.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**kwargs)
    assert message.stop_reason == "max_tokens" and 30 <= len(message.content[0].text) <= 48


def test_count_tokens_is_an_estimate_of_the_prompt_sent(claude, fake):
    plain = claude.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x " * 400}])
    assert 150 <= plain.input_tokens <= 250, "about four characters of English per token"
    with_tools = claude.messages.count_tokens(model="claude-sonnet-4-5", system=SYSTEM, tools=TOOLS,
                                              messages=[{"role": "user", "content": "x " * 400}])
    assert with_tools.input_tokens > plain.input_tokens + 1000, "tool descriptions and system prompt count"
    cjk = claude.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "你好" * 100}])
    assert cjk.input_tokens == 200
    assert not fake.requests_to(COMPLETIONS), "counting never runs a turn"


# ------------------------------------------------------------------ errors


from tests.helpers import PRE_STREAM  # noqa: E402  (one table of faults and statuses)

#: status → (SDK class, Messages error type)
BY_STATUS = {
    400: (anthropic.BadRequestError, "invalid_request_error"),
    429: (anthropic.RateLimitError, "rate_limit_error"),
    502: (anthropic.InternalServerError, "api_error"),
    503: (anthropic.ServiceUnavailableError, "overloaded_error"),
    504: (anthropic.GatewayTimeoutError, "api_error"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", sorted(PRE_STREAM))
def test_fault_before_any_output(claude, fake, fault, stream):
    status = PRE_STREAM[fault][1]
    cls, kind = BY_STATUS[status]
    fake.configure(fault=fault)
    with pytest.raises(cls) as info:
        if stream:
            with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=ASK) as events:
                events.get_final_message()
        else:
            claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK)
    error = info.value
    assert error.status_code == status and error.body["type"] == "error" and error.request_id.startswith("req_")
    assert error.body["error"]["type"] == kind and "<" not in error.body["error"]["message"]
    assert error.response.headers["x-should-retry"] in {"true", "false"}


@pytest.mark.parametrize(("fault", "retry"), [("rate_limited", "false"), ("x5sec", "false"), ("http_500", "true"),
                                             ("stream_data_inspection", "false")])
def test_the_sdk_retries_only_when_a_quick_retry_can_help(proxy, fake, fault, retry):
    fake.configure(fault=fault)
    resp = requests.post(proxy.url + "/v1/messages", timeout=20, headers={"x-api-key": API_KEY},
                         json={"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": ASK})
    assert resp.status_code == PRE_STREAM[fault][1] and resp.json()["type"] == "error"
    assert resp.headers["x-should-retry"] == retry, "the anthropic SDK sleeps as long as Retry-After says"


def test_a_spent_quota_does_not_put_the_sdk_to_sleep(proxy, fake):
    fake.configure(fault="rate_limited")  # Retry-After: 10800
    client = anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, timeout=20)  # default retries
    started = time.monotonic()
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=ASK)
    assert time.monotonic() - started < 3 and info.value.response.headers["Retry-After"] == "10800"
    assert len(fake.requests_to(COMPLETIONS)) == 1


def test_error_after_content_ends_the_stream_with_an_error_event(claude, proxy, fake):
    fake.configure(fault="error_after_content", answer="Partial answer that is cut off", chunk_chars=4)
    received = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=ASK) as events:
            for text in events.text_stream:
                received.append(text)
    assert "".join(received) and info.value.body["error"]["type"] == "api_error"
    events = raw_events(proxy, {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": ASK})
    assert events[-1][0] == "error" and "message_stop" not in [name for name, _ in events]
    assert set(events[-1][1]) == {"type", "error"} and set(events[-1][1]["error"]) == {"type", "message"}


def test_broken_connection_mid_stream(claude, fake):
    fake.configure(answer="one two three four five six", chunk_chars=4, disconnect_after_events=3)
    with pytest.raises(anthropic.APIStatusError) as info:
        with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=ASK) as events:
            events.get_final_message()
    assert "broke off" in info.value.body["error"]["message"]


def test_slow_first_output_gets_pings(make_proxy, fake):
    fake.configure(first_token_delay=0.6)
    proxy = make_proxy(PING_INTERVAL_SECONDS=0.2)
    names = [name for name, _ in raw_events(proxy, {"model": "claude-sonnet-4-5", "max_tokens": 100,
                                                    "messages": ASK})]
    assert names[0] == "message_start" and names.count("ping") >= 2 and names[-1] == "message_stop"
    client = anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, max_retries=0)
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=ASK) as events:
        assert events.get_final_message().content[0].text == "Hello from fake Qwen."


@pytest.mark.parametrize(("body", "words"), [
    ({"max_tokens": 10, "messages": ASK}, "model"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []}, "messages"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 0, "messages": ASK}, "max_tokens"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
     "audio"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": ASK, "tools": [{"type": "bash_20250124",
                                                                                  "name": "bash"}]}, "bash_20250124"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": ASK, "tool_choice": {"type": "tool", "name": "X"}},
     "'X'"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": ASK, "thinking": {"type": "sometimes"}}, "thinking"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": ASK, "stop_sequences": "END"}, "stop_sequences"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]}, "file"),
    ([1, 2, 3], "JSON object"),
])
def test_invalid_requests_are_400s_in_the_messages_shape(proxy, fake, body, words):
    resp = requests.post(proxy.url + "/v1/messages", json=body, headers={"x-api-key": API_KEY}, timeout=20)
    assert resp.status_code == 400 and resp.headers["x-should-retry"] == "false"
    error = resp.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert words in error["error"]["message"]
    assert not fake.requests_to(COMPLETIONS)


@pytest.mark.parametrize(("method", "path", "status", "kind"), [
    ("GET", "/v1/messages", 405, "invalid_request_error"),
    ("POST", "/v1/messages/batches", 404, "not_found_error"),
    ("POST", "/v1/messages", 400, "invalid_request_error"),  # not JSON
])
def test_routing_errors_under_messages_keep_the_shape(proxy, method, path, status, kind):
    resp = requests.request(method, proxy.url + path, data=b"{not json", headers={"x-api-key": API_KEY}, timeout=20)
    assert resp.status_code == status and resp.json()["type"] == "error"
    assert resp.json()["error"]["type"] == kind


def test_endpoints_are_listed(proxy):
    endpoints = requests.get(proxy.url + "/", timeout=20).json()["endpoints"]
    assert "POST /v1/messages" in endpoints and "POST /v1/messages/count_tokens" in endpoints


def test_requests_above_the_cap_get_a_messages_shaped_429(make_proxy, fake):
    fake.configure(answer="abcdefgh", chunk_chars=2, stall_after_events=3)
    proxy = make_proxy(MAX_CONCURRENT_REQUESTS=1)
    held = requests.post(proxy.url + "/v1/messages", stream=True, timeout=20, headers={"x-api-key": API_KEY},
                         json={"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": ASK, "stream": True})
    chunks = held.iter_content(chunk_size=None)
    assert next(chunks).startswith(b"event: message_start")
    client = anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=ASK)
    assert info.value.body["error"]["type"] == "rate_limit_error" and "MAX_CONCURRENT_REQUESTS" in str(info.value.body)
    fake.configure(stall_after_events=None)
    fake.release_stalls()
    assert b"event: message_stop" in b"".join(chunks)


def test_a_claude_code_sized_context_goes_up_as_a_document(claude, fake):
    """Claude Code's system prompt and history outgrow the site's turn limit: the context is offloaded."""
    history = [{"role": "user", "content": "Read the code."}, {"role": "assistant", "content": "ok " * 8000},
               {"role": "user", "content": "Now summarise it."}]
    message = claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, system=SYSTEM * 20, tools=TOOLS,
                                     messages=history)
    assert message.content[0].text
    sent_message = sent(fake)[-1]
    assert len(sent_message["content"]) < 60_000 and "Now summarise it." in sent_message["content"]
    assert [f["name"] for f in sent_message["files"]] == ["conversation.txt"]


SOURCES = [
    {"title": "Python docs", "url": "https://docs.python.org/3/", "hostname": "docs.python.org", "snippet": "…"},
    {"title": "PEP 8", "url": "https://peps.python.org/pep-0008/", "hostname": "peps.python.org", "snippet": "…"},
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_web_search_server_tool_uses_the_sites_search(claude, fake, stream):
    fake.configure(answer="Style is in PEP 8 [[2]].", search_results=SOURCES)
    kwargs = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": ASK,
              "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]}
    if stream:
        with claude.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**kwargs)
    assert sent(fake)[-1]["chat_type"] == "search"
    (text,) = message.content
    assert text.text == "Style is in PEP 8 [[2]]."
    assert [(c.type, c.url, c.title) for c in text.citations] == [
        ("web_search_result_location", "https://peps.python.org/pep-0008/", "PEP 8"),
        ("web_search_result_location", "https://docs.python.org/3/", "Python docs")]


def test_client_hang_up_closes_the_upstream_stream(proxy, fake):
    assert fake.wait_streams_closed(timeout=5), "streams of earlier tests must have ended"
    fake.configure(answer="x" * 3000, chunk_chars=1, chunk_delay=0.01)
    resp = requests.post(proxy.url + "/v1/messages", stream=True, timeout=20, headers={"x-api-key": API_KEY},
                         json={"model": "claude-sonnet-4-5", "max_tokens": 5000, "messages": ASK, "stream": True})
    chunks = resp.iter_content(chunk_size=None)
    assert next(chunks).startswith(b"event: message_start") and next(chunks)
    assert fake.open_streams == 1
    resp.close()
    assert fake.wait_streams_closed(timeout=5)


def test_the_models_api_for_the_anthropic_sdk(make_proxy, fake):
    proxy = make_proxy(ANTHROPIC_MODEL_MAP="claude-opus-*=qwen3.8-max")
    client = anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, max_retries=0)
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert "qwen3.7-plus" in ids and "qwen3.8-max-thinking" in ids and page.has_more is False
    assert all(m.type == "model" and m.created_at and m.display_name for m in page.data)
    opus = client.models.retrieve("claude-opus-4-1")
    assert (opus.id, opus.display_name) == ("claude-opus-4-1", "claude-opus-4-1 (runs on qwen3.8-max)")
    assert client.models.retrieve("claude-haiku-4-5").display_name == "claude-haiku-4-5 (runs on qwen3.7-plus)"
    with pytest.raises(anthropic.NotFoundError) as info:
        client.models.retrieve("gemini-9")
    assert info.value.body["error"]["type"] == "not_found_error"
    openai_shape = requests.get(proxy.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=20)
    assert openai_shape.json()["object"] == "list", "OpenAI clients keep their shape"
