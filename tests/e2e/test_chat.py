"""Text chat through the proxy with the official ``openai`` SDK, against the emulator over loopback."""

from __future__ import annotations

import json

import pytest
import requests

from tests.helpers import API_KEY, TOKEN

THOUGHTS = ["First I look at the question.", "Then I answer briefly."]


def _stream(client, **kwargs):
    kwargs.setdefault("model", "qwen3.7-plus")
    kwargs.setdefault("messages", [{"role": "user", "content": "hi"}])
    return list(client.chat.completions.create(stream=True, **kwargs))


def _text(chunks, field="content"):
    return "".join(getattr(c.choices[0].delta, field, None) or "" for c in chunks if c.choices)


def _reasoning(chunks):
    return "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)


def test_non_stream_answer(client, fake):
    fake.configure(answer="Server-Sent Events is a one-way HTTP stream.")
    completion = client.chat.completions.create(model="qwen3.7-plus", messages=[{"role": "user", "content": "SSE?"}])
    assert completion.object == "chat.completion" and completion.model == "qwen3.7-plus"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.content == "Server-Sent Events is a one-way HTTP stream."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0 and completion.usage.total_tokens >= completion.usage.completion_tokens


def test_stream_answer_is_incremental_and_complete(client, fake):
    answer = "Ünïcödé 😀 text, split into many small pieces across TCP writes."
    fake.configure(answer=answer, chunk_chars=3)
    chunks = _stream(client)
    assert _text(chunks) == answer
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {"qwen3.7-plus"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("mode", ["incremental", "cumulative"])
def test_one_character_chunks_lose_nothing(client, fake, mode):
    answer = "ha ha ha... xxxx **bold** 1. 1.1 😀😀!"
    fake.configure(answer=answer, chunk_chars=1, content_mode=mode)
    chunks = _stream(client)
    assert _text(chunks) == answer
    assert len(chunks) >= len(answer) - 2, "each character is relayed as it arrives"


@pytest.mark.parametrize("variant", [
    {"content_mode": "cumulative"},
    {"send_done": True},
    {"keepalive_comments": True},
    {"line_ending": "\r\n"},
    {"line_ending": "\r"},
    {"coalesce": True},
    {"split_writes": False},
    {"first_token_delay": 0.2},
])
def test_stream_variants_give_the_same_answer(client, fake, variant):
    fake.configure(answer="The same answer, whatever the framing.", chunk_chars=5, **variant)
    assert _text(_stream(client)) == "The same answer, whatever the framing."


def test_thinking_goes_to_reasoning_content_only(client, fake):
    fake.configure(answer="323", thinking=THOUGHTS, thinking_titles=["Multiplying"])
    chunks = _stream(client, model="qwen3.7-plus-thinking")
    assert _reasoning(chunks) == "\n\n".join(THOUGHTS)
    assert _text(chunks) == "323"
    sent = fake.requests_to("/api/v2/chat/completions")[-1].json["messages"][0]["feature_config"]
    assert sent["thinking_enabled"] is True and sent["thinking_mode"] == "Thinking"


def test_non_stream_thinking(client, fake):
    fake.configure(answer="323", thinking=THOUGHTS)
    completion = client.chat.completions.create(model="qwen3.7-plus-thinking", messages=[{"role": "user", "content": "17*19"}])
    message = completion.choices[0].message
    assert message.content == "323" and message.model_extra["reasoning_content"] == "\n\n".join(THOUGHTS)
    assert completion.usage.completion_tokens_details.reasoning_tokens > 0


def test_old_think_phase(client, fake):
    fake.configure(answer="ok", thinking=THOUGHTS, thinking_style="think")
    chunks = _stream(client, model="qwen3.7-plus-thinking")
    assert _text(chunks) == "ok" and "First I look" in _reasoning(chunks)


@pytest.mark.parametrize(("model", "extra", "last", "enabled"), [
    ("qwen3.7-plus-fast", {}, "hi", False),
    ("qwen3.7-plus", {"extra_body": {"enable_thinking": False}}, "hi", False),
    ("qwen3.7-plus", {"reasoning_effort": "high"}, "hi", True),
    ("qwen3.7-plus-thinking", {"messages": [{"role": "user", "content": "hi /no_think"}]}, "hi", False),
])
def test_thinking_controls_reach_the_site(client, fake, model, extra, last, enabled):
    fake.configure(thinking=THOUGHTS)
    chunks = _stream(client, model=model, **extra)
    message = fake.requests_to("/api/v2/chat/completions")[-1].json["messages"][0]
    assert message["content"] == last and message["feature_config"]["thinking_enabled"] is enabled
    assert bool(_reasoning(chunks)) is enabled


def test_usage_chunk_only_when_asked(client, fake):
    fake.configure(answer="counted", thinking=THOUGHTS)
    chunks = _stream(client, model="qwen3.7-plus-thinking", stream_options={"include_usage": True})
    *body, last = chunks
    assert last.choices == [] and last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert last.usage.completion_tokens_details.reasoning_tokens > 0
    assert body[-1].choices[0].finish_reason == "stop" and all(c.usage is None for c in body)


SOURCES = [
    {"title": "Python docs", "url": "https://docs.python.org/3/", "hostname": "docs.python.org", "snippet": "…"},
    {"title": "PEP 8", "url": "https://peps.python.org/pep-0008/", "hostname": "peps.python.org", "snippet": "…"},
]


def test_search_citations_become_annotations(client, fake):
    fake.configure(answer="Style is in PEP 8 [[2]].", search_results=SOURCES)
    completion = client.chat.completions.create(model="qwen3.7-plus-search", messages=[{"role": "user", "content": "style?"}])
    message = completion.choices[0].message
    assert message.content == "Style is in PEP 8 [[2]]."
    cited = message.annotations[0].url_citation
    assert (cited.url, cited.title, message.content[cited.start_index:cited.end_index]) == (
        "https://peps.python.org/pep-0008/", "PEP 8", "[[2]]")
    sent = fake.requests_to("/api/v2/chat/completions")[-1].json
    assert sent["messages"][0]["chat_type"] == "search" and sent["messages"][0]["feature_config"]["auto_search"]


def test_streamed_search_keeps_text_and_sends_annotations_last(client, fake):
    fake.configure(answer="See [[1]].", search_results=SOURCES)
    chunks = _stream(client, model="qwen3.7-plus-search")
    assert _text(chunks) == "See [[1]]."
    annotations = chunks[-1].choices[0].delta.model_extra["annotations"]
    assert annotations[0]["url_citation"]["url"] == "https://docs.python.org/3/"


def test_one_message_per_turn_with_history_flattened(client, fake):
    client.chat.completions.create(model="gpt-4o", messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": [{"type": "text", "text": "And 3+3?"}]},
    ])
    new_chat = fake.requests_to("/api/v2/chats/new")[0]  # then a spare, made ahead of the next conversation
    (turn,) = fake.requests_to("/api/v2/chat/completions")
    (message,) = turn.json["messages"]
    assert turn.query["chat_id"] in fake.chats and turn.json["model"] == "qwen3.7-plus"
    assert message["content"].index("Be brief.") < message["content"].index("What is 2+2?") < message["content"].index("And 3+3?")
    assert new_chat.json["models"] == ["qwen3.7-plus"]


def test_browser_headers_and_cookie_are_sent(client, fake):
    client.chat.completions.create(model="qwen3.7-plus", messages=[{"role": "user", "content": "hi"}])
    headers = fake.requests_to("/api/v2/chat/completions")[-1].headers
    assert f"token={TOKEN}" in headers["Cookie"] and "ssxmod_itna=" in headers["Cookie"]
    assert headers["source"] == "web" and headers["version"] and headers["Sec-Fetch-Mode"] == "cors"
    assert API_KEY not in json.dumps(dict(headers))


def test_raw_sse_framing(proxy, fake):
    fake.configure(answer="abc", chunk_chars=1)
    resp = requests.post(proxy.url + "/v1/chat/completions", stream=True, timeout=10,
                         headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"model": "qwen3.7-plus", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Accel-Buffering"] == "no" and resp.headers["Cache-Control"] == "no-cache"
    events = [e for e in resp.content.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert [p["object"] for p in payloads] == ["chat.completion.chunk"] * len(payloads)
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in payloads) == "abc"


def test_unversioned_routes_work_too(proxy, fake):
    resp = requests.post(proxy.url + "/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "x"}]}, timeout=10)
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_stops_early_with_length(client, fake, stream):
    fake.configure(answer="word " * 400, chunk_chars=8, chunk_delay=0.001)
    kwargs = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "talk"}], "max_tokens": 10}
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        text, reason = _text(chunks), chunks[-1].choices[0].finish_reason
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        text, reason = choice.message.content, choice.finish_reason
    assert reason == "length" and 30 <= len(text) <= 48
    assert fake.wait_streams_closed(timeout=5), "the rest of the upstream answer is not read"
