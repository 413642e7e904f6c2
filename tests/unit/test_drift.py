"""The site's 2026-07/08 moves (§14), as pure translation: two candidate answers, think_skip."""

from __future__ import annotations

import json

import pytest

from config import ConfigError, load_settings
from errors import ContentFiltered
from qwen_client import wire
from transform import answer
from transform import openai_chat as t
from tests.helpers import FIXTURES

A, B = "rid-a", "rid-b"


def created(rid: str, index: int) -> dict:
    return {"response.created": {"chat_id": "c", "parent_id": "p", "response_id": rid, "response_index": str(index)}}


def text(content: str, rid: str | None, phase: str = "answer", **extra: object) -> dict:
    event: dict = {"choices": [{"delta": {"role": "assistant", "content": content, "phase": phase,
                                          "status": "typing", **extra}}]}
    if rid is not None:
        event["response_id"] = rid
    return event


def finished(rid: str) -> dict:
    return {"choices": [{"delta": {"content": "", "phase": "answer", "status": "finished"}}], "response_id": rid}


def relay(events: list[dict]) -> tuple[answer.StreamTranslator, str]:
    tr = answer.StreamTranslator("c", "m", 1, include_usage=True)
    sent = ""
    for event in events:
        for chunk in tr.feed(event):
            sent += chunk["choices"][0]["delta"].get("content") or ""
        if tr.finished:
            break
    for chunk in tr.finish():
        if chunk["choices"]:
            sent += chunk["choices"][0]["delta"].get("content") or ""
    return tr, sent


@pytest.mark.parametrize(("events", "expected"), [
    # one answer: as before
    ([created(A, 0), text("Hello ", A), text("world", A), finished(A)], "Hello world"),
    # two candidates, the followed one's deltas first, then interleaved
    ([created(A, 0), created(B, 1), text("Hello ", A), text("Other ", B), text("world", A), text("text", B),
      finished(A), finished(B)], "Hello world"),
    # the other candidate's deltas first after both created events, and it finishes first
    ([created(A, 0), created(B, 1), text("Other ", B), text("text", B), finished(B), text("Hello ", A),
      text("world", A), finished(A)], "Hello world"),
    # an untagged delta belongs to the followed answer
    ([created(A, 0), created(B, 1), text("Hello ", A), text("Other", B), text("world", None), finished(A)],
     "Hello world"),
    # no created event at all (an older stream): nothing is filtered
    ([text("Hello ", A), text("world", None), finished(A)], "Hello world"),
    # the same created event twice is not a second candidate
    ([created(A, 0), created(A, 0), text("Hello world", A), finished(A)], "Hello world"),
])
def test_only_the_first_candidate_is_relayed(events, expected):
    tr, sent = relay(events)
    assert sent == expected == tr.completion()["choices"][0]["message"]["content"]
    assert tr.response_id == A or not any("response.created" in e for e in events)


def test_the_other_candidates_thinking_sources_and_usage_are_dropped():
    thought = {"summary_thought": {"content": ["mine"]}}
    other = {"summary_thought": {"content": ["theirs, much longer"]}}
    source = {"web_search_info": [{"url": "https://mine.example", "title": "m"}]}
    rival_source = {"web_search_info": [{"url": "https://theirs.example", "title": "t"}]}
    events = [created(A, 0), created(B, 1),
              {**text("", B, "thinking_summary", extra=other), "usage": {"output_tokens": 99}},
              {**text("", A, "thinking_summary", extra=thought), "usage": {"output_tokens": 3}},
              text("", B, "web_search", extra=rival_source), text("", A, "web_search", extra=source),
              {**text("ok", A), "usage": {"input_tokens": 5, "output_tokens": 4}},
              {**text("no", B), "usage": {"input_tokens": 5, "output_tokens": 50}}, finished(A)]
    tr, _ = relay(events)
    message = tr.completion()["choices"][0]["message"]
    assert message["reasoning_content"] == "mine"
    assert [a["url_citation"]["url"] for a in message["annotations"]] == ["https://mine.example"]
    assert tr.completion()["usage"]["completion_tokens"] == 4


# ----------------------------------------------------------------- think_skip

SKIPLESS = t.ModelInfo("qwen3.8-max", thinking=True, search=True, think_skip=False)
PLUS = t.ModelInfo("qwen3.7-plus", thinking=True, search=True)
MODELS = [PLUS, SKIPLESS]


@pytest.mark.parametrize(("meta", "think_skip"), [
    ({"think_skip": {"enable": False}}, False),
    ({"think_skip": {"enable": True}}, True),
    ({}, True),  # older lists have no key: thinking off was always allowed
    ({"think_skip": None}, True),
    ({"think_skip": {"enable": 0}}, True),  # only an explicit false forbids
])
def test_think_skip_is_read_from_the_model_meta(meta, think_skip):
    item = {"id": "m", "info": {"meta": {"abilities": {"thinking": 1}, **meta}}}
    assert t.parse_upstream_models({"data": [item]})[0].think_skip is think_skip


def test_the_capture_keeps_think_skip_in_info_meta():
    raw = json.loads((FIXTURES / "models-v2-response.json").read_text())
    meta = raw["data"]["data"][0]["info"]["meta"]
    assert meta["think_skip"] == {"enable": True}
    assert t.parse_upstream_models(raw)[0].think_skip is True
    meta["think_skip"]["enable"] = False
    [model] = t.parse_upstream_models(raw)
    assert model.think_skip is False and not [v for v in t.model_variants(model) if "-fast" in v]


def test_no_fast_variant_for_models_that_refuse_thinking_off():
    ids = [m["id"] for m in t.openai_model_list(MODELS)]
    assert "qwen3.7-plus-fast" in ids and "qwen3.7-plus-fast-search" in ids
    assert [i for i in ids if i.startswith("qwen3.8-max")] == [
        "qwen3.8-max", "qwen3.8-max-thinking", "qwen3.8-max-search", "qwen3.8-max-thinking-search"]


@pytest.mark.parametrize(("requested", "search"), [("qwen3.8-max-fast", False), ("QWEN3.8-MAX-FAST-SEARCH", True)])
def test_a_stale_fast_id_runs_in_auto(requested, search):
    choice = t.resolve_model(requested, MODELS)
    assert (choice.upstream.id, choice.thinking, choice.search) == ("qwen3.8-max", None, search)


def _chat(**extra):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    return t.parse_chat_request(body)


@pytest.mark.parametrize("extra", [
    {"enable_thinking": False}, {"reasoning_effort": "none"}, {"reasoning_effort": "minimal"},
    {"thinking": {"type": "disabled"}}, {"thinking_budget": 0},
    {"messages": [{"role": "user", "content": "hi /no_think"}]},
])
def test_thinking_off_requests_become_auto_where_the_model_refuses_them(extra):
    chat = _chat(**extra)
    assert t.resolve_thinking(t.ModelChoice(SKIPLESS), chat) is None
    assert t.resolve_thinking(t.ModelChoice(PLUS), chat) is False
    assert t.feature_config(None, False)["thinking_enabled"] is True


def test_thinking_on_and_auto_are_untouched_where_the_model_refuses_thinking_off():
    assert t.resolve_thinking(t.ModelChoice(SKIPLESS), _chat(enable_thinking=True)) is True
    assert t.resolve_thinking(t.ModelChoice(SKIPLESS, thinking=True), _chat()) is True
    assert t.resolve_thinking(t.ModelChoice(SKIPLESS), _chat()) is None


# ----------------------------------------------------------------- header settings


@pytest.mark.parametrize(("key", "value"), [
    ("QWEN_VERSION", "0.2.81\r\nX-Evil: 1"), ("QWEN_SEC_CH_UA", '"Chromium";v="140" — 中文'), ("QWEN_BX_V", " "),
])
def test_header_settings_must_be_one_line_of_ascii(key, value):
    with pytest.raises(ConfigError, match=key):
        load_settings({"CONFIG_FILE": "", "COOKIE_FILE": "", key: value}, environ={})


def test_header_settings_defaults_and_overrides():
    settings = load_settings({"CONFIG_FILE": "", "COOKIE_FILE": "", "QWEN_SEND_BEARER": "true",
                              "QWEN_ACCEPT_LANGUAGE": " zh-CN,zh;q=0.9 "}, environ={})
    assert settings.QWEN_SEND_BEARER is True and settings.QWEN_ACCEPT_LANGUAGE == "zh-CN,zh;q=0.9"
    assert load_settings({"CONFIG_FILE": "", "COOKIE_FILE": ""}, environ={}).QWEN_SEND_BEARER is False


# ----------------------------------------------------------------- the wire: the other candidate's errors


def _decode(payloads: list[dict]) -> list:
    candidates = wire.Candidates()
    return [wire.decode_event(json.dumps(p).encode(), candidates) for p in payloads]


def test_an_error_of_the_candidate_not_followed_is_dropped():
    error = {"error": {"code": "data_inspection_failed", "stage": "output", "details": "x"}, "response_id": B,
             "response_index": 1}
    decoded = _decode([created(A, 0), created(B, 1), text("ok", A), error, finished(A)])
    assert decoded[3] is None and decoded[4] == finished(A)


@pytest.mark.parametrize("tag", [A, None, "rid-unknown"])
def test_any_other_error_still_ends_the_answer(tag):
    error = {"error": {"code": "data_inspection_failed", "details": "x"}}
    if tag:
        error["response_id"] = tag
    with pytest.raises(ContentFiltered):
        _decode([created(A, 0), created(B, 1), error])
    with pytest.raises(ContentFiltered):
        _decode([created(A, 0), {**error, "response_id": B}])  # one candidate only: nothing to ignore
