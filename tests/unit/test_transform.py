"""Table-driven tests of the pure OpenAI ⇄ Qwen translation in ``transform.openai_chat`` and ``transform.answer``."""

from __future__ import annotations

import json

import pytest

from transform import answer
from transform import openai_chat as t
from errors import InvalidRequest, ModelNotFound
from tests.helpers import FIXTURES, fixture_events

MODELS = [
    t.ModelInfo("qwen3.7-plus", thinking=True, search=True, vision=True),
    t.ModelInfo("qwen3.5-omni-plus", vision=True),
    t.ModelInfo("qwen3-coder-plus", search=True),
]


# ----------------------------------------------------------------- model list


def test_models_fixture_parses_with_integer_abilities():
    models = t.parse_upstream_models(json.loads((FIXTURES / "models-v2-response.json").read_text()))
    assert models == [t.ModelInfo("qwen3.7-plus", "Qwen3.7-Plus", 0, thinking=True, search=True, vision=True,
                                  generates=frozenset({"t2i", "image_edit", "t2v"}))]


@pytest.mark.parametrize("payload", [
    {"data": [{"id": "m1"}]},
    {"success": True, "data": {"data": [{"id": "m1"}]}},
])
def test_both_model_envelopes(payload):
    assert [m.id for m in t.parse_upstream_models(payload)] == ["m1"]


@pytest.mark.parametrize("payload", [{}, {"data": []}, {"data": {"data": "x"}}, [], {"data": [{"name": "no id"}]}])
def test_unusable_model_lists_raise(payload):
    with pytest.raises(ValueError):
        t.parse_upstream_models(payload)


def test_variants_follow_capabilities():
    ids = [m["id"] for m in t.openai_model_list(MODELS)]
    assert ids == [
        "qwen3.7-plus", "qwen3.7-plus-thinking", "qwen3.7-plus-fast",
        "qwen3.7-plus-search", "qwen3.7-plus-thinking-search", "qwen3.7-plus-fast-search",
        "qwen3.5-omni-plus",
        "qwen3-coder-plus", "qwen3-coder-plus-search",
    ]


@pytest.mark.parametrize(("requested", "upstream", "thinking", "search"), [
    ("qwen3.7-plus", "qwen3.7-plus", None, False),
    ("Qwen3.7-Plus-Thinking", "qwen3.7-plus", True, False),
    ("qwen3.7-plus-fast", "qwen3.7-plus", False, False),
    ("qwen3.7-plus-search", "qwen3.7-plus", None, True),
    ("qwen3.7-plus-thinking-search", "qwen3.7-plus", True, True),
    ("qwen3.7-plus-fast-search", "qwen3.7-plus", False, True),
    ("gpt-4o", "qwen3.7-plus", None, False),
    ("gpt-3.5-turbo", "qwen3.7-plus", None, False),
    ("qwen3-coder-plus-search", "qwen3-coder-plus", None, True),
])
def test_resolve_model(requested, upstream, thinking, search):
    choice = t.resolve_model(requested, MODELS)
    assert (choice.upstream.id, choice.thinking, choice.search) == (upstream, thinking, search)


def test_alias_goes_to_configured_default():
    assert t.resolve_model("gpt-4", MODELS, "qwen3-coder-plus").upstream.id == "qwen3-coder-plus"


@pytest.mark.parametrize("requested", [
    "gpt-9", "qwen3.5-omni-plus-thinking", "qwen3.5-omni-plus-search", "qwen3.7-plus-search-thinking", "nope-fast",
])
def test_unknown_or_unsupported_variant_is_404_with_examples(requested):
    with pytest.raises(ModelNotFound) as info:
        t.resolve_model(requested, MODELS)
    assert info.value.status == 404 and "qwen3.7-plus" in info.value.message and requested in info.value.message


# ----------------------------------------------------------------- requests


def _body(**kw):
    return {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}], **kw}


@pytest.mark.parametrize(("body", "param"), [
    ([], None),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    (_body(messages=[]), "messages"),
    (_body(messages="hi"), "messages"),
    (_body(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    (_body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (_body(messages=[{"role": "system", "content": "only system"}]), "messages"),
    (_body(stream="yes"), "stream"),
    (_body(n=2), "n"),
    (_body(thinking_budget=-1), "thinking_budget"),
    (_body(max_tokens=0), "max_tokens"),
    (_body(max_completion_tokens="9"), "max_completion_tokens"),
    (_body(response_format={"type": "xml"}), "response_format"),
    (_body(tools=[{"type": "function", "function": {"description": "no name"}}]), "tools[0].function.name"),
    (_body(tool_choice="required"), "tool_choice"),
    (_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]}]),
     "messages[0].content[0]"),
])
def test_bad_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as info:
        t.parse_chat_request(body)
    assert info.value.status == 400 and info.value.param == param


def test_image_parts_are_kept_as_media_not_dropped():
    body = _body(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}])
    chat = t.parse_chat_request(body)
    assert chat.messages == (("user", "what is this?"),)
    assert [(p.kind, p.source, p.filename) for p in chat.media] == [("image", "https://x/y.png", "y.png")]


@pytest.mark.parametrize(("extra", "thinking"), [
    ({}, None),
    ({"enable_thinking": True}, True),
    ({"enable_thinking": False}, False),
    ({"reasoning_effort": "high"}, True),
    ({"reasoning_effort": "none"}, False),
    ({"thinking_budget": 0}, False),
    ({"thinking_budget": 2048}, True),
    ({"thinking": {"type": "enabled"}}, True),
])
def test_thinking_controls(extra, thinking):
    assert t.parse_chat_request(_body(**extra)).thinking is thinking


@pytest.mark.parametrize(("messages", "thinking", "last"), [
    ([("user", "hello /think")], True, "hello"),
    ([("user", "hello /no_think  ")], False, "hello"),
    ([("user", "a /no_think"), ("assistant", "b"), ("user", "c /think")], True, "c"),
    ([("user", "a /think"), ("assistant", "b"), ("user", "c")], None, "c"),
    ([("user", "path/think about it")], None, "path/think about it"),
    ([("user", "see foo/think")], None, "see foo/think"),
    ([("user", "/no_think")], False, ""),
])
def test_trailing_think_tags_are_stripped(messages, thinking, last):
    body = _body(messages=[{"role": r, "content": c} for r, c in messages], enable_thinking=None)
    chat = t.parse_chat_request(body)
    assert chat.thinking is thinking and chat.messages[-1][1] == last


def test_think_tags_are_stripped_from_history_too():
    body = _body(messages=[{"role": "user", "content": "a /no_think"}, {"role": "assistant", "content": "b"},
                           {"role": "user", "content": "c /think"}])
    assert [text for _, text in t.parse_chat_request(body).messages] == ["a", "b", "c"]


def test_think_tag_beats_enable_thinking():
    chat = t.parse_chat_request(_body(messages=[{"role": "user", "content": "x /no_think"}], enable_thinking=True))
    assert chat.thinking is False


def test_usage_only_when_streaming_and_asked():
    assert t.parse_chat_request(_body(stream=True, stream_options={"include_usage": True})).include_usage
    assert not t.parse_chat_request(_body(stream=True)).include_usage
    assert not t.parse_chat_request(_body(stream_options={"include_usage": True})).include_usage


@pytest.mark.parametrize("extra", [{"web_search_options": {}}, {"tools": [{"type": "web_search"}]}])
def test_search_requests(extra):
    assert t.parse_chat_request(_body(**extra)).search


def test_resolve_thinking_never_for_models_that_cannot():
    chat = t.parse_chat_request(_body(enable_thinking=True))
    assert t.resolve_thinking(t.ModelChoice(MODELS[1]), chat) is False
    assert t.resolve_thinking(t.ModelChoice(MODELS[0], thinking=False), chat) is True
    assert t.resolve_thinking(t.ModelChoice(MODELS[0], thinking=False), t.parse_chat_request(_body())) is False


# ----------------------------------------------------------------- flattening


def test_lone_user_message_is_sent_as_is():
    assert t.flatten_messages([("user", "hi")], 60) == "hi"


def test_history_is_delimited_by_role():
    text = t.flatten_messages([("system", "be brief"), ("user", "a"), ("assistant", "b"), ("user", "c")], 60)
    assert text == "<system>\nbe brief\n</system>\n<user>\na\n</user>\n<assistant>\nb\n</assistant>\n<user>\nc\n</user>"


def test_history_keeps_system_and_newest_messages():
    messages = [("system", "S")] + [("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(9)]
    text = t.flatten_messages(messages, 3)
    assert "S" in text and "m6" in text and "m8" in text and "m5" not in text


def test_text_parts_are_joined_and_tool_history_kept():
    chat = t.parse_chat_request(_body(messages=[
        {"role": "developer", "content": [{"type": "text", "text": "rule 1"}, {"type": "text", "text": "rule 2"}]},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]))
    assert chat.messages[0] == ("system", "rule 1\nrule 2")
    assert chat.messages[2] == ("assistant", '<tool_call>\n{"name": "get", "arguments": {}}\n</tool_call>')
    assert chat.messages[3] == ("tool", '<tool_response name="get" tool_call_id="call_1">\nsunny\n</tool_response>')
    text = t.flatten_messages(chat.messages, 10)
    assert '</assistant>\n<tool_response name="get" tool_call_id="call_1">\nsunny\n</tool_response>\n<user>' in text


# ----------------------------------------------------------------- payloads


@pytest.mark.parametrize(("thinking", "expected"), [
    (None, {"thinking_enabled": True, "auto_thinking": True, "thinking_mode": "Auto"}),
    (True, {"thinking_enabled": True, "auto_thinking": False, "thinking_mode": "Thinking"}),
    (False, {"thinking_enabled": False, "auto_thinking": False, "thinking_mode": "Fast"}),
])
def test_feature_config_gears(thinking, expected):
    config = t.feature_config(thinking, search=False)
    assert config["output_schema"] == "phase" and config["auto_search"] is False
    assert {k: config[k] for k in expected} == expected


def test_completion_payload_has_one_message_and_agreeing_chat_types():
    body = t.completion_payload(model="m", chat_id="c1", content="hi", chat_type="search",
                                config=t.feature_config(None, True), fid="f1", timestamp=1)
    (message,) = body["messages"]
    assert body["chat_id"] == "c1" and body["stream"] is True and body["incremental_output"] is True
    assert message["chat_type"] == message["sub_chat_type"] == message["extra"]["meta"]["subChatType"] == "search"
    assert message["feature_config"]["output_schema"] == "phase" and message["role"] == "user"


# ----------------------------------------------------------------- streams


@pytest.mark.parametrize(("chunks", "expected_pieces"), [
    (["Hel", "lo", " world"], ["Hel", "lo", " world"]),                       # increments
    (["Hello there", "Hello there, friend", "Hello there, friend!"], ["Hello there", ", friend", "!"]),
    (["Hel", "Hello", "Hello world"], ["Hel", "", "lo world"]),                # short start: held one delta
    (["x", "x", "x"], ["x", "x", "x"]),                                        # repeats are text, not snapshots
    (["1", "1.", "5"], ["1", "", "1.5"]),                                      # held, then proved increments
    (["**", "**bold", "**"], ["**", "", "**bold**"]),
    (["Hello there", "Hello there!", "Oops"], ["Hello there", "!", "Oops"]),   # snapshots, then not
    (["", "x"], ["", "x"]),
])
def test_text_accumulator(chunks, expected_pieces):
    acc = answer.TextAccumulator()
    assert [acc.feed(c) for c in chunks] == expected_pieces


def test_text_held_at_the_end_is_flushed_as_an_increment():
    acc = answer.TextAccumulator()
    assert [acc.feed("a"), acc.feed("ab"), acc.flush()] == ["a", "", "ab"] and acc.text == "aab"


TEXTS = ["x" * 40, "ha ha ha ha!", "....!!!...", "**bold** and **more**", "1. 1.1 1.11 11",
         "Ünïcödé 😀😀 ok", "The quick brown fox jumps over the lazy dog."]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_every_chunking_reconstructs_the_text(text, size):
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    increments = answer.TextAccumulator()
    out = "".join(increments.feed(p) for p in pieces) + increments.flush()
    assert out == text
    if len(pieces) >= 3:
        snapshots = answer.TextAccumulator()
        out = "".join(snapshots.feed(text[: i + size]) for i in range(0, len(text), size)) + snapshots.flush()
        assert out == text


@pytest.mark.parametrize(("snapshots", "pieces"), [
    (["a", "ab", "ab\n\nc"], ["a", "b", "\n\nc"]),          # growing arrays, joined
    (["abc", "ab"], ["abc", ""]),                             # shorter repeat
    (["abc", "abXd", "abXde"], ["abc", "Xd", "e"]),           # rewritten, then growing again
])
def test_snapshot_differ(snapshots, pieces):
    differ = answer.SnapshotDiffer()
    assert [differ.feed(s) for s in snapshots] == pieces


def test_fixture_stream_translates_to_reasoning_then_answer():
    tr = answer.StreamTranslator("chatcmpl-1", "qwen3.7-plus-thinking", 100, include_usage=True)
    chunks = [c for e in fixture_events("t2t-stream-thinking-summary.sse") for c in tr.feed(e)]
    assert tr.response_id == "9f8fa867-2a3c-40ea-b5ba-36268d21c726" and tr.finished
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["choices"][0]["delta"]["reasoning_content"].startswith("I recognize that 19")
    assert "content" not in chunks[0]["choices"][0]["delta"]
    assert chunks[1]["choices"][0]["delta"] == {"content": "17 * 19 = 323."}
    final, usage = tr.finish()
    assert final["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == 827
    assert usage["usage"]["completion_tokens"] == 477 and usage["usage"]["total_tokens"] == 1304
    assert usage["usage"]["completion_tokens_details"]["reasoning_tokens"] == 439
    assert all(c["id"] == "chatcmpl-1" and c["model"] == "qwen3.7-plus-thinking" for c in chunks + [final])


def test_no_usage_chunk_unless_asked():
    tr = answer.StreamTranslator("c", "m", 1)
    assert len(tr.finish()) == 1


def test_cumulative_thinking_summary_emits_only_new_text():
    tr = answer.StreamTranslator("c", "m", 1)

    def summary(*thoughts):
        return {"choices": [{"delta": {"phase": "thinking_summary", "content": "",
                                       "extra": {"summary_thought": {"content": list(thoughts)}}}}]}

    pieces = [c["choices"][0]["delta"].get("reasoning_content") for e in
              (summary("Step one"), summary("Step one done"), summary("Step one done", "Two")) for c in tr.feed(e)]
    assert pieces == ["Step one", " done", "\n\nTwo"]


def test_old_think_phase_and_missing_phase():
    tr = answer.StreamTranslator("c", "m", 1)
    tr.feed({"choices": [{"delta": {"phase": "think", "content": "hmm"}}]})
    tr.feed({"choices": [{"delta": {"role": "assistant", "content": "plain"}}]})  # no phase: output_schema ignored
    assert tr.reasoning_text == "hmm" and tr.answer.text == "plain"


def test_unknown_phases_and_finished_thinking_do_not_end_or_leak():
    tr = answer.StreamTranslator("c", "m", 1)
    assert tr.feed({"choices": [{"delta": {"phase": "thinking_summary", "status": "finished", "content": ""}}]}) == []
    assert tr.feed({"choices": [{"delta": {"phase": "code_interpreter", "content": "print(1)"}}]}) == []
    assert not tr.finished and tr.answer.text == ""


def test_search_sources_become_url_citations():
    tr = answer.StreamTranslator("c", "m", 1)
    info = [{"title": "A", "url": "https://a.example/1", "hostname": "a.example"},
            {"title": "B", "url": "https://b.example/2", "hostname": "b.example"}]
    tr.feed({"choices": [{"delta": {"phase": "web_search", "content": "", "extra": {"web_search_info": info}}}]})
    tr.feed({"choices": [{"delta": {"phase": "answer", "content": "Fact [[2]]."}}]})
    message = tr.completion()["choices"][0]["message"]
    assert message["content"] == "Fact [[2]]."
    first, second = message["annotations"]
    assert first["url_citation"] == {"url": "https://b.example/2", "title": "B", "start_index": 5, "end_index": 10}
    assert second["url_citation"]["url"] == "https://a.example/1" and second["url_citation"]["end_index"] == 0


@pytest.mark.parametrize(("usage", "expected"), [
    (None, (0, 0, 0, 0)),
    ({"input_tokens": 5, "output_tokens": 7}, (5, 7, 12, 0)),
    ({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, (1, 2, 3, 0)),
    ({"input_tokens": 5, "output_tokens": 7, "total_tokens": 12, "output_tokens_details": {"reasoning_tokens": 4}},
     (5, 7, 12, 4)),
])
def test_openai_usage(usage, expected):
    u = answer.openai_usage(usage)
    assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"],
            u["completion_tokens_details"]["reasoning_tokens"]) == expected


def test_response_formats_are_accepted():
    assert t.parse_chat_request(_body(response_format={"type": "text"})).agent is None
    assert t.parse_chat_request(_body(response_format={"type": "json_object"})).agent.output.kind == "json_object"
    spec = t.parse_chat_request(_body(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}})).agent
    assert (spec.output.kind, spec.output.name, spec.output.strict) == ("json_schema", "x", True)


def test_max_tokens_cuts_the_answer_with_length():
    tr = answer.StreamTranslator("c", "m", 1, max_tokens=5)

    def answer_event(text, output, reasoning=0):
        return {"choices": [{"delta": {"phase": "answer", "content": text}}],
                "usage": {"output_tokens": output, "output_tokens_details": {"reasoning_tokens": reasoning}}}

    tr.feed(answer_event("Thinking counts not: ", 50, reasoning=48))  # 2 answer tokens
    assert not tr.finished
    tr.feed(answer_event("one two three", 53, reasoning=48))         # 5 answer tokens
    assert tr.finished and tr.truncated
    assert tr.finish()[-1]["choices"][0]["finish_reason"] == "length"
    assert tr.completion()["choices"][0]["finish_reason"] == "length"


def test_max_completion_tokens_wins_over_max_tokens():
    assert t.parse_chat_request(_body(max_tokens=100, max_completion_tokens=7)).max_tokens == 7


@pytest.mark.parametrize("event", [
    {"response.created": {"chat_id": "c", "response_id": "r1", "response_index": 0}},
    {"type": "response.created", "response": {"id": "r1", "chat_id": "c"}},
])
def test_response_id_from_either_created_form(event):
    tr = answer.StreamTranslator("c", "m", 1)
    assert tr.feed(event) == [] and tr.response_id == "r1"


@pytest.mark.parametrize("event", [
    {"response.info": {"response_id": "r", "action": "skip_think"}}, {"response.stopped": {}}, {"done": True},
    {"choices": []}, {"choices": [{"delta": None}]}, {"usage": {"input_tokens": 3}},
])
def test_marker_events_produce_nothing(event):
    assert answer.StreamTranslator("c", "m", 1).feed(event) == []


@pytest.mark.parametrize(("value", "expected"), [
    ("qwen3-max", "qwen3-max"),
    ("m" * 5_000_000, "m" * 59 + "…"),
    ({"type": {"a": [1, 2, 3, 4, 5]}}, "{'type': {'a': [...]}}"),
    (["x" * 100], None),
])
def test_errors_echo_input_briefly(value, expected):
    from errors import echo
    assert len(echo(value)) <= 60 and (expected is None or echo(value) == expected)
