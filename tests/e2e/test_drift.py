"""The site as it moved in 2026-07/08 (§14), through the official SDK: candidates, think_skip, headers, the jar."""

from __future__ import annotations

import json
import re

import pytest

from transform.tool_prompts import format_call
from tests.fake_qwen.drift import RIVAL_ANSWER, RIVAL_SOURCE, RIVAL_THOUGHT
from tests.helpers import TOKEN

COMPLETIONS, CHATS_NEW = "/api/v2/chat/completions", "/api/v2/chats/new"
SOURCES = [{"title": "SSE", "url": "https://example.com/sse", "hostname": "example.com", "snippet": "s"}]
ANSWER = "Server-Sent Events are one-way [[1]] streams of text events over HTTP."
MESSAGES = [{"role": "user", "content": "What is SSE?"}]


def _streamed(client, model: str) -> dict:
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    out = {"content": "", "reasoning": "", "annotations": [], "usage": None}
    for chunk in stream:
        if chunk.usage:
            out["usage"] = chunk.usage.model_dump()
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            out["content"] += choice.delta.content or ""
            out["reasoning"] += extra.get("reasoning_content") or ""
            out["annotations"] += extra.get("annotations") or []
    return out


def _whole(client, model: str) -> dict:
    reply = client.chat.completions.create(model=model, messages=MESSAGES)
    message = reply.choices[0].message
    extra = message.model_extra or {}
    return {"content": message.content, "reasoning": extra.get("reasoning_content") or "",
            "annotations": extra.get("annotations") or [], "usage": reply.usage.model_dump()}


@pytest.mark.parametrize("read", [_streamed, _whole], ids=["stream", "non-stream"])
@pytest.mark.parametrize("switches", [
    {"candidate_order": "followed_first"}, {"candidate_order": "rival_first"}, {"candidate_untagged": True},
    {"candidate_rival_fails": True, "candidate_order": "rival_first"}, {"content_mode": "cumulative"},
], ids=["followed-first", "rival-first", "untagged", "rival-fails", "cumulative"])
def test_two_candidates_give_exactly_one_answer(client, fake, read, switches):
    switches = dict(switches)
    fake.configure(answer=ANSWER, thinking=["Define it.", "Keep it short."], search_results=SOURCES,
                   content_mode=switches.pop("content_mode", "incremental"))
    single = read(client, "qwen3.7-plus-thinking-search")
    assert single["content"] == ANSWER and single["reasoning"]
    fake.configure(candidates=2, **switches)
    double = read(client, "qwen3.7-plus-thinking-search")
    assert double == single, "one candidate's text, reasoning, sources and usage, never both"
    flat = str(double)
    assert RIVAL_ANSWER[:20] not in flat and RIVAL_THOUGHT not in flat and RIVAL_SOURCE["url"] not in flat


def test_a_continued_conversation_follows_the_candidate_it_relayed(client, fake):
    fake.configure(candidates=2, candidate_order="rival_first", answer="First answer.")
    history = list(MESSAGES)
    reply = client.chat.completions.create(model="qwen3.7-plus", messages=history).choices[0].message
    assert reply.content == "First answer."
    history += [{"role": "assistant", "content": reply.content}, {"role": "user", "content": "And then?"}]
    assert client.chat.completions.create(model="qwen3.7-plus", messages=history).choices[0].message.content
    first, second = fake.requests_to(COMPLETIONS)
    chat_id = first.query["chat_id"]
    followed, rival = fake.chats[chat_id]["turns"][0]["candidates"]
    assert second.query["chat_id"] == chat_id, "the conversation continued its upstream chat"
    assert second.json["messages"][0]["content"] == "And then?"
    assert second.json["parent_id"] == second.json["parentId"] == followed != rival
    assert second.json["messages"][0]["parent_id"] == followed


# ----------------------------------------------------------------- think_skip


def test_no_thinking_off_variant_for_models_that_refuse_it(client, fake):
    ids = {m.id for m in client.models.list().data}
    assert {"qwen3.7-plus-fast", "qwen3.7-plus-fast-search", "qwen3.8-max-thinking"} <= ids
    assert not {i for i in ids if i.startswith("qwen3.8-max") and "-fast" in i}


@pytest.mark.parametrize(("model", "extra", "content"), [
    ("qwen3.8-max", {"extra_body": {"enable_thinking": False}}, "hi"),
    ("qwen3.8-max", {"reasoning_effort": "minimal"}, "hi"),
    ("qwen3.8-max", {"extra_body": {"reasoning_effort": "none"}}, "hi"),
    ("qwen3.8-max", {}, "hi /no_think"),
    ("qwen3.8-max-fast", {}, "hi"),
    ("qwen3.8-max-fast-search", {}, "hi"),
])
def test_thinking_off_requests_run_in_auto_on_models_that_refuse_it(client, fake, model, extra, content):
    fake.configure(answer="fine", thinking=["a thought"])
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **extra)
    assert reply.choices[0].message.content == "fine"
    sent = fake.requests_to(COMPLETIONS)[-1].json
    features = sent["messages"][0]["feature_config"]
    assert sent["model"] == "qwen3.8-max"
    assert (features["thinking_enabled"], features["thinking_mode"], features["auto_thinking"]) == (True, "Auto", True)


def test_models_that_allow_it_still_get_thinking_off(client, fake):
    fake.configure(answer="quick", thinking=["hidden"])
    reply = client.chat.completions.create(model="qwen3.7-plus-fast", messages=MESSAGES)
    assert reply.choices[0].message.content == "quick"
    assert not (reply.choices[0].message.model_extra or {}).get("reasoning_content")
    features = fake.requests_to(COMPLETIONS)[-1].json["messages"][0]["feature_config"]
    assert (features["thinking_enabled"], features["thinking_mode"]) == (False, "Fast")


# ----------------------------------------------------------------- what the browser sends

_JS_DATE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} \d{2} \d{4} \d{2}:\d{2}:\d{2} GMT[+-]\d{4}$")


def test_the_browser_header_set_and_bodies(client, fake):
    fake.configure(answer="one")
    history = list(MESSAGES)
    history.append(client.chat.completions.create(model="qwen3.7-plus", messages=history).choices[0].message
                   .model_dump(exclude_none=True))
    history.append({"role": "user", "content": "two"})
    client.chat.completions.create(model="qwen3.7-plus", messages=history)
    new = fake.requests_to(CHATS_NEW)[0]  # the first conversation's; then a spare made ahead
    first, second = fake.requests_to(COMPLETIONS)
    chat_id = first.query["chat_id"]
    for request in (new, first, second):
        h = request.headers
        assert "authorization" not in h, "the web app sends the cookie alone"
        assert request.cookies["token"] == TOKEN and request.cookies["ssxmod_itna"] == "fake-itna-cookie-value"
        assert h["Accept"] == "application/json" and h["source"] == "web" and h["version"] == "0.2.83"
        assert _JS_DATE.match(h["timezone"]), h["timezone"]
        assert (h["Sec-Fetch-Mode"], h["Sec-Fetch-Site"], h["X-Accel-Buffering"]) == ("cors", "same-origin", "no")
    assert new.headers["Referer"].endswith("/c/new-chat")
    assert first.headers["Referer"].endswith(f"/c/{chat_id}") and second.headers["Referer"].endswith(f"/c/{chat_id}")
    assert list(new.json) == ["chatId", "models", "project_id", "chat_type", "chat_mode", "timestamp"]
    assert (new.json["chatId"], new.json["project_id"], new.json["chat_mode"]) == ("", "", "normal")
    assert first.json["chatId"] == first.json["chat_id"] == chat_id and first.json["parentId"] == ""
    response_id = fake.chats[chat_id]["turns"][0]["response_id"]
    assert second.json["parentId"] == second.json["parent_id"] == response_id
    assert first.json["messages"][0]["feature_config"]["thinking_format"] == "summary"


def test_header_values_are_settings(make_proxy, fake):
    proxy = make_proxy(QWEN_VERSION="0.2.90", QWEN_BX_V="2.5.40", QWEN_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9",
                       QWEN_SEC_CH_UA='"Chromium";v="141"', QWEN_USER_AGENT="Mozilla/5.0 Test", QWEN_SEND_BEARER=True)
    proxy.client().chat.completions.create(model="qwen3.7-plus", messages=MESSAGES)
    h = fake.requests_to(COMPLETIONS)[-1].headers
    assert (h["version"], h["bx-v"], h["Accept-Language"], h["sec-ch-ua"], h["User-Agent"]) == (
        "0.2.90", "2.5.40", "zh-CN,zh;q=0.9", '"Chromium";v="141"', "Mozilla/5.0 Test")
    assert h["Authorization"] == f"Bearer {TOKEN}"
    assert "bx-ua" not in h and "bx-umidtoken" not in h, "fingerprints only when configured"
    proxy = make_proxy(QWEN_BX_UA="231!fake-fingerprint", QWEN_BX_UMIDTOKEN="T2gAfake")
    proxy.client().chat.completions.create(model="qwen3.7-plus", messages=MESSAGES)
    h = fake.requests_to(COMPLETIONS)[-1].headers
    assert (h["bx-ua"], h["bx-umidtoken"]) == ("231!fake-fingerprint", "T2gAfake")


def test_cookies_the_site_sets_are_sent_back_like_a_browser_jar(client, fake):
    fake.configure(require_waf_cookie=True, answer="through the WAF")
    history = list(MESSAGES)
    reply = client.chat.completions.create(model="qwen3.7-plus", messages=history).choices[0].message
    assert reply.content == "through the WAF"
    history += [{"role": "assistant", "content": reply.content}, {"role": "user", "content": "again"}]
    assert client.chat.completions.create(model="qwen3.7-plus", messages=history).choices[0].message.content
    issued = fake.requests_to(COMPLETIONS)[0].cookies["acw_tc"]
    assert issued in fake.waf_cookies
    assert all(r.cookies.get("acw_tc") == issued and r.cookies["token"] == TOKEN for r in fake.requests_to(COMPLETIONS))


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_come_from_the_followed_candidate_only(client, fake, stream):
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    fake.configure(candidates=2, candidate_order="rival_first",
                   rival_answer="Checking Berlin.\n" + format_call("get_weather", {"city": "Berlin"}))
    fake.script("Checking Paris.\n" + format_call("get_weather", {"city": "Paris"}))
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        chunks = list(client.chat.completions.create(model="qwen3.7-plus", messages=ask, tools=[weather], stream=True))
        calls = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        arguments = "".join(tc.function.arguments or "" for tc in calls)
        assert {tc.index for tc in calls} == {0}
    else:
        message = client.chat.completions.create(model="qwen3.7-plus", messages=ask, tools=[weather]).choices[0].message
        [call] = message.tool_calls
        content, arguments = message.content, call.function.arguments
    assert content.strip() == "Checking Paris." and json.loads(arguments) == {"city": "Paris"}
