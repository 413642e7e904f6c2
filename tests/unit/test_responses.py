"""The Responses API translation as tables: bodies → chat requests, chat chunks → events, and the response store."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings

from errors import InvalidRequest
from routes.response_store import MemoryResponseStore, StoredResponse
from tests.helpers import RESPONSES_BODY
from transform.openai_responses import parse_responses_request
from transform.openai_responses_events import ResponseEvents, responses_usage, url_annotation
from transform.tool_prompts import fold_tool_result, format_call

M = "qwen3.7-plus"
CALL = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"x": 1}'}


def user(text):
    return {"role": "user", "content": text}


# ------------------------------------------------------------------ request: input → messages

MESSAGES = [
    ("a string", {"input": "hi"}, (("user", "hi"),)),
    ("instructions first", {"instructions": "Rules.", "input": "hi"}, (("system", "Rules."), ("user", "hi"))),
    ("developer is system", {"input": [{"role": "developer", "content": "D"}, user("hi")]},
     (("system", "D"), ("user", "hi"))),
    ("input_text parts joined", {"input": [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]}]}, (("user", "a\nb"),)),
    ("assistant output_text", {"input": [user("q"), {"type": "message", "role": "assistant", "id": "msg_1",
                                                    "content": [{"type": "output_text", "text": "A",
                                                                 "annotations": []}]}, user("q2")]},
     (("user", "q"), ("assistant", "A"), ("user", "q2"))),
    ("calls fold into the assistant text before them",
     {"input": [user("q"), {"role": "assistant", "content": "Let me see."}, CALL,
                {"type": "function_call_output", "call_id": "call_1", "output": "42"}]},
     (("user", "q"), ("assistant", "Let me see.\n" + format_call("f", {"x": 1})),
      ("tool", fold_tool_result("f", "call_1", "42")))),
    ("a call alone is an assistant message; reasoning items dropped",
     {"input": [user("q"), {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "t"}]},
                CALL, {"type": "function_call_output", "call_id": "call_1", "output": [
                    {"type": "input_text", "text": "4"}, {"type": "input_text", "text": "2"}]}]},
     (("user", "q"), ("assistant", format_call("f", {"x": 1})), ("tool", fold_tool_result("f", "call_1", "4\n2")))),
    ("parallel calls in one message",
     {"input": [user("q"), CALL, {**CALL, "call_id": "call_2", "arguments": "{}"}]},
     (("user", "q"), ("assistant", format_call("f", {"x": 1}) + "\n" + format_call("f", {})))),
    ("images in a call's output are noted, not sent",
     {"input": [user("q"), CALL, {"type": "function_call_output", "call_id": "call_1", "output": [
         {"type": "input_text", "text": "shot:"}, {"type": "input_image", "image_url": "https://h/s.png"}]}]},
     (("user", "q"), ("assistant", format_call("f", {"x": 1})),
      ("tool", fold_tool_result("f", "call_1", "shot:\n[earlier image: s.png]")))),
    ("web_search_call items skipped", {"input": [{"type": "web_search_call", "id": "ws"}, user("hi")]},
     (("user", "hi"),)),
]


@pytest.mark.parametrize(("name", "body", "expected"), MESSAGES, ids=[row[0] for row in MESSAGES])
def test_input_becomes_chat_messages(name, body, expected):
    assert parse_responses_request({"model": M, **body}).chat.messages == expected


HISTORY = (("system", "Old rules."), ("user", "one"), ("assistant", "ok"))


@pytest.mark.parametrize(("instructions", "expected_system"), [
    (None, [("system", "Old rules.")]), ("New rules.", [("system", "New rules.")]), ("", [])])
def test_previous_history_goes_first_and_instructions_replace_its_system_text(instructions, expected_system):
    body = {"model": M, "input": "two", **({"instructions": instructions} if instructions is not None else {})}
    messages = parse_responses_request(body, HISTORY).chat.messages
    assert list(messages) == [*expected_system, ("user", "one"), ("assistant", "ok"), ("user", "two")]


def test_an_output_answers_a_call_of_the_previous_response_by_name():
    body = {"model": M, "input": [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]}
    chat = parse_responses_request(body, HISTORY, {"call_9": "lookup"}).chat
    assert chat.messages[-1] == ("tool", fold_tool_result("lookup", "call_9", "x"))


def test_media_of_the_newest_user_message_are_sent_and_earlier_ones_noted():
    png = "data:image/png;base64,iVBORw0KGgoAAAAA"
    image = {"type": "input_image", "image_url": png}
    body = {"model": M, "input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, image]},
                                  {"role": "assistant", "content": "seen"},
                                  {"role": "user", "content": [image, {"type": "input_text", "text": "b"}]}]}
    chat = parse_responses_request(body).chat
    assert chat.messages[0] == ("user", "a\n[earlier image]") and [p.kind for p in chat.media] == ["image"]


# ------------------------------------------------------------------ request: options

OPTIONS = [
    ("reasoning effort high", {"reasoning": {"effort": "high"}}, "thinking", True),
    ("reasoning effort minimal", {"reasoning": {"effort": "minimal"}}, "thinking", False),
    ("no reasoning", {}, "thinking", None),
    ("max_output_tokens", {"max_output_tokens": 50}, "max_tokens", 50),
    ("web_search tool", {"tools": [{"type": "web_search"}]}, "search", True),
    ("web_search_preview choice", {"tool_choice": {"type": "web_search_preview"}}, "search", True),
    ("no search", {"tools": [{"type": "file_search"}]}, "search", False),
    ("stream", {"stream": True}, "stream", True),
    ("usage always", {}, "include_usage", True),
]


@pytest.mark.parametrize(("name", "extra", "field", "value"), OPTIONS, ids=[row[0] for row in OPTIONS])
def test_options_become_chat_options(name, extra, field, value):
    assert getattr(parse_responses_request({"model": M, "input": "hi", **extra}).chat, field) == value


def test_flat_function_tools_and_choices():
    tool = {"type": "function", "name": "f", "description": "F.", "parameters": {"type": "object"}}
    spec = parse_responses_request({"model": M, "input": "hi", "tools": [tool, {"type": "web_search"}],
                                    "tool_choice": {"type": "function", "name": "f"},
                                    "parallel_tool_calls": False}).chat.agent
    assert [(t.name, t.description, t.strict) for t in spec.tools] == [("f", "F.", True)]
    assert (spec.choice, spec.forced, spec.parallel) == ("function", "f", False)
    loose = parse_responses_request({"model": M, "input": "hi", "tools": [{**tool, "strict": False}]}).chat.agent
    assert loose.tools[0].strict is False and loose.choice == "auto"


def test_allowed_tools_offer_only_the_listed_ones():
    tools = [{"type": "function", "name": n} for n in ("a", "b", "c")] + [{"type": "web_search"}]
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "b"}]}
    chat = parse_responses_request({"model": M, "input": "hi", "tools": tools, "tool_choice": choice}).chat
    assert [t.name for t in chat.agent.tools] == ["b"] and chat.agent.choice == "required" and not chat.search
    choice = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "web_search"}]}
    chat = parse_responses_request({"model": M, "input": "hi", "tools": tools, "tool_choice": choice}).chat
    assert chat.agent is None and chat.search


@pytest.mark.parametrize(("fmt", "kind", "strict"), [
    ({"type": "json_schema", "name": "C", "schema": {"type": "object"}, "strict": True}, "json_schema", True),
    ({"type": "json_schema", "name": "C", "schema": {"type": "object"}}, "json_schema", False),
    ({"type": "json_object"}, "json_object", False),
])
def test_text_format_is_the_output_contract(fmt, kind, strict):
    output = parse_responses_request({"model": M, "input": "hi", "text": {"format": fmt}}).chat.agent.output
    assert (output.kind, output.strict) == (kind, strict)


def test_plain_text_format_asks_nothing():
    assert parse_responses_request({"model": M, "input": "hi", "text": {"format": {"type": "text"}}}).chat.agent is None


def test_echo_carries_the_apis_defaults():
    request = parse_responses_request({"model": M, "input": "hi", "store": False, "metadata": {"k": "v"}})
    assert request.store is False and request.previous_response_id is None
    assert request.echo["tool_choice"] == "auto" and request.echo["text"] == {"format": {"type": "text"}}
    assert request.echo["metadata"] == {"k": "v"} and request.echo["parallel_tool_calls"] is True


@pytest.mark.parametrize("body", [None, [], {"model": M, "input": "hi", "conversation": "conv_1"},
                                  {"model": M, "input": [{"role": "assistant", "content": [
                                      {"type": "input_image", "image_url": "https://a/b.png"}]}]}])
def test_unusable_bodies_are_refused(body):
    with pytest.raises(InvalidRequest):
        parse_responses_request(body)


# ------------------------------------------------------------------ answer: chunks → events


def chunk(delta=None, finish=None, usage=None):
    if usage is not None:
        return {"choices": [], "usage": usage}
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def translate(chunks, echo=None):
    counter = itertools.count(1)
    events = ResponseEvents("resp_1", 1700000000, echo or {"model": M}, lambda p: f"{p}_{next(counter)}")
    out = events.start()
    for c in chunks:
        out += events.feed(c)
    return events, out + events.finish()


def kinds(events):
    return [e["type"].removeprefix("response.") for e in events]


SEQUENCES = [
    ("text", [chunk({"content": "Hi"}), chunk({"content": "!"}), chunk({}, "stop")],
     ["created", "in_progress", "output_item.added", "content_part.added", "output_text.delta",
      "output_text.delta", "output_text.done", "content_part.done", "output_item.done", "completed"]),
    ("thinking then text", [chunk({"reasoning_content": "hm"}), chunk({"content": "A"}), chunk({}, "stop")],
     ["created", "in_progress", "output_item.added", "reasoning_summary_part.added",
      "reasoning_summary_text.delta", "reasoning_summary_text.done", "reasoning_summary_part.done",
      "output_item.done", "output_item.added", "content_part.added", "output_text.delta", "output_text.done",
      "content_part.done", "output_item.done", "completed"]),
    ("a call", [chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                       "function": {"name": "f", "arguments": ""}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}), chunk({}, "tool_calls")],
     ["created", "in_progress", "output_item.added", "function_call_arguments.delta",
      "function_call_arguments.done", "output_item.done", "completed"]),
    ("cut by max tokens", [chunk({"content": "x"}), chunk({}, "length")],
     ["created", "in_progress", "output_item.added", "content_part.added", "output_text.delta",
      "output_text.done", "content_part.done", "output_item.done", "incomplete"]),
]


@pytest.mark.parametrize(("name", "chunks", "expected"), SEQUENCES, ids=[row[0] for row in SEQUENCES])
def test_event_sequences(name, chunks, expected):
    _, events = translate(chunks)
    assert kinds(events) == expected
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_output_items_and_usage():
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
             "prompt_tokens_details": {"cached_tokens": 1}, "completion_tokens_details": {"reasoning_tokens": 3}}
    state, events = translate([
        chunk({"reasoning_content": "think"}), chunk({"content": "Hello"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}),
        chunk({}, "tool_calls"), chunk(usage=usage)])
    response = events[-1]["response"]
    assert response["status"] == "completed" and response["model"] == M and response["id"] == "resp_1"
    assert response["output"] == [
        {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "think"}],
         "status": "completed"},
        {"id": "msg_2", "type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}]},
        {"id": "fc_3", "type": "function_call", "status": "completed", "call_id": "call_a", "name": "f",
         "arguments": '{"a":1}'},
    ]
    assert response["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 1},
                                 "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 3},
                                 "total_tokens": 12}
    assert state.text == "Hello" and state.calls() == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]
    added = events[2]["item"]
    assert added["status"] == "in_progress" and added["summary"] == [], "events keep the item as it was then"


def test_citations_land_on_the_text_and_are_announced():
    cite = {"type": "url_citation", "url_citation": {"url": "https://a", "title": "A", "start_index": 3,
                                                     "end_index": 8}}
    _, events = translate([chunk({"content": "See [[1]]."}), chunk({"annotations": [cite]}, "stop")])
    [added] = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    flat = {"type": "url_citation", "url": "https://a", "title": "A", "start_index": 3, "end_index": 8}
    assert added["annotation"] == flat
    assert events[-1]["response"]["output"][0]["content"][0]["annotations"] == [flat]


def test_failure_marks_the_open_item_and_says_why():
    counter = itertools.count(1)
    state = ResponseEvents("resp_1", 0, {}, lambda p: f"{p}_{next(counter)}")
    state.start()
    state.feed(chunk({"content": "Half"}))
    error, failed = state.fail({"message": "It broke.", "type": "upstream_error", "param": None,
                                "code": "upstream_stream_broken"})
    assert error == {"type": "error", "sequence_number": 5, "code": "upstream_stream_broken",
                     "message": "It broke.", "param": None}
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "upstream_stream_broken", "message": "It broke."}
    assert failed["response"]["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize(("annotation", "expected"), [
    ({"type": "file_citation"}, None), ({"type": "url_citation", "url_citation": "x"}, None),
    ({"type": "url_citation", "url_citation": {"url": "u"}},
     {"type": "url_citation", "url": "u", "title": "", "start_index": 0, "end_index": 0}),
])
def test_url_annotation(annotation, expected):
    assert url_annotation(annotation) == expected


def test_usage_defaults_to_zeros():
    assert responses_usage(None)["total_tokens"] == 0


# ------------------------------------------------------------------ the store


def record(n, text="x"):
    return StoredResponse(f"resp_{n}", {"id": f"resp_{n}", "output": []}, (("user", text),))


def test_store_expires_and_is_bounded_in_count_and_size():
    now = [0.0]
    store = MemoryResponseStore(ttl=10, capacity=3, max_chars=10_000, clock=lambda: now[0])
    for n in range(4):
        store.put(record(n))
    assert store.get("resp_0") is None and store.get("resp_3") is not None and len(store) == 3
    now[0] = 11
    assert store.get("resp_3") is None and len(store) == 0
    store.put(record(5, "y" * 6000))
    store.put(record(6, "z" * 6000))
    assert store.get("resp_5") is None and store.get("resp_6") is not None, "the oldest leave to fit the budget"
    store.put(record(7, "w" * 20_000))
    assert store.get("resp_7") is None, "a record above the whole budget is not kept"
    assert store.delete("resp_6") and not store.delete("resp_6")


def test_stored_call_names():
    stored = StoredResponse("r", {"output": [{"type": "message"}, {"type": "function_call", "call_id": "c",
                                                                    "name": "f"}]}, ())
    assert stored.call_names() == {"c": "f"}


def test_input_file_and_audio_parts_are_media_of_their_kind():
    pdf = "data:application/pdf;base64,JVBERi0xLjcKJSVFT0YK"
    wav = {"data": "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=", "format": "wav"}
    body = {"model": M, "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "Read."}, {"type": "input_file", "file_data": pdf, "filename": "a.pdf"}]}]}
    [part] = parse_responses_request(body).chat.media
    assert (part.kind, part.filename, part.data[:5]) == ("document", "a.pdf", b"%PDF-")
    body["input"][0]["content"][1] = {"type": "input_audio", "input_audio": wav}
    assert [p.kind for p in parse_responses_request(body).chat.media] == ["audio"]
    body["input"][0]["content"][1] = {"type": "input_file", "file_url": "https://h/a.pdf"}
    with pytest.raises(InvalidRequest, match="file_data"):
        parse_responses_request(body)


@settings(max_examples=300, deadline=None)
@given(body=RESPONSES_BODY)
def test_any_body_is_a_chat_request_or_an_invalid_request(body):
    try:
        parse_responses_request(body, HISTORY, {"call_1": "f"})
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message
