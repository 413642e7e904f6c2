"""The Anthropic Messages translation as pure functions: requests in, events and messages out, errors."""

from __future__ import annotations

import time

import pytest

from errors import InvalidRequest
from transform import anthropic_messages as am
from transform import anthropic_stream as ast


def parse(**body):
    body.setdefault("model", "claude-sonnet-4-5")
    body.setdefault("max_tokens", 100)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return am.parse_messages_request(body)


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize(("requested", "table", "expected"), [
    ("claude-sonnet-4-5-20250929", (), ""),
    ("claude-3-5-haiku-20241022", (), ""),
    ("Claude-Opus-4-1", (("claude-opus-*", "qwen3.8-max"),), "qwen3.8-max"),
    ("claude-haiku-4-5", (("claude-opus-*", "qwen3.8-max"), ("claude-*", "qwen3.7-plus-fast")), "qwen3.7-plus-fast"),
    ("qwen3.7-plus-thinking", (("claude-*", "x"),), "qwen3.7-plus-thinking"),
    (" qwen3.8-max ", (), "qwen3.8-max"),
    ("gpt-4o", (), "gpt-4o"),  # an OpenAI alias: resolve_model maps it to the default
])
def test_map_model(requested, table, expected):
    assert am.map_model(requested, table) == expected


# --------------------------------------------------------------------------- requests


def test_system_blocks_and_text_become_the_chat_messages():
    request = parse(system=[{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two.",
                                                                      "cache_control": {"type": "ephemeral"}}],
                    messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                              {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}])
    assert request.chat.messages == (("system", "Rule one.\n\nRule two."), ("user", "a\nb"), ("assistant", "c"),
                                     ("user", "d"))
    assert request.model == "claude-sonnet-4-5" and request.chat.include_usage and request.chat.max_tokens == 100


def test_tool_history_folds_into_call_and_response_blocks():
    request = parse(messages=[
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                          {"type": "text", "text": "Listing."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "LS", "input": {"path": "/"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                                      "content": [{"type": "text", "text": "denied"}]},
                                     {"type": "text", "text": "try again"}]},
    ], tools=[{"name": "LS", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}])
    roles = [role for role, _ in request.chat.messages]
    assert roles == ["user", "assistant", "tool", "user"]
    assistant, tool, user = (text for _, text in request.chat.messages[1:])
    assert assistant == 'Listing.\n<tool_call>\n{"name": "LS", "arguments": {"path": "/"}}\n</tool_call>'
    assert tool == '<tool_response name="LS" tool_call_id="toolu_1">\n[the tool reported an error]\ndenied\n</tool_response>'
    assert user == "try again" and "hm" not in assistant
    assert [t.name for t in request.chat.agent.tools] == ["LS"]


@pytest.mark.parametrize(("choice", "expected"), [
    (None, ("auto", None, True)),
    ({"type": "auto"}, ("auto", None, True)),
    ({"type": "any"}, ("required", None, True)),
    ({"type": "tool", "name": "LS"}, ("function", "LS", True)),
    ({"type": "none"}, ("none", None, True)),
    ({"type": "any", "disable_parallel_tool_use": True}, ("required", None, False)),
])
def test_tool_choice(choice, expected):
    spec = parse(tools=[{"name": "LS", "input_schema": {"type": "object"}}], tool_choice=choice).chat.agent
    assert (spec.choice, spec.forced, spec.parallel) == expected


@pytest.mark.parametrize(("thinking", "flag", "budget"), [
    (None, None, None),
    ({"type": "enabled", "budget_tokens": 2048}, True, 2048),
    ({"type": "disabled"}, False, None),
    ({"type": "adaptive"}, None, None),
])
def test_thinking(thinking, flag, budget):
    chat = parse(thinking=thinking).chat
    assert (chat.thinking, chat.thinking_budget) == (flag, budget)


def test_web_search_server_tool_switches_on_search():
    chat = parse(tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]).chat
    assert chat.search and chat.agent is None


def test_media_blocks():
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    chat = parse(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjcK"}},
        {"type": "document", "title": "Notes", "source": {"type": "text", "media_type": "text/plain", "data": "x=1"}},
        {"type": "text", "text": "Compare."}]}]).chat
    assert [(p.kind, p.remote) for p in chat.media] == [("image", False), ("image", True), ("document", False)]
    assert chat.media[0].data.startswith(b"\x89PNG") and chat.media[2].filename == "document.pdf"
    assert chat.messages == (("user", "Notes\nx=1\nCompare."),)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": ""}, "model"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "assistant", "content": [{"type": "image"}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "x"}]}]}, "messages.0.content.0"),
    ({"system": [{"type": "image"}]}, "system.0"),
    ({"system": 5}, "system"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"stream": "yes"}, "stream"),
    ({"stop_sequences": [""]}, "stop_sequences"),
    ({"stop_sequences": ["x" * 1001]}, "stop_sequences"),
    ({"thinking": {"type": "enabled", "budget_tokens": -1}}, "thinking.budget_tokens"),
    ({"tools": {"name": "x"}}, "tools"),
    ({"tools": [{"type": "computer_20250124", "name": "computer"}]}, "tools.0"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"metadata": "user"}, "metadata"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x"}}]}]},
     "messages.0.content.0.source"),
])
def test_invalid_bodies_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as info:
        parse(**body)
    assert info.value.param == param and info.value.status == 400


@pytest.mark.parametrize(("messages", "prefill", "last"), [
    ([{"role": "user", "content": "JSON please"}, {"role": "assistant", "content": "{ "}], "{",
     ("user", "JSON please\n\nStart your reply with exactly the following text, and continue it:\n{")),
    ([{"role": "user", "content": [{"type": "text", "text": "Q"}]}, {"role": "assistant", "content": "A:"}], "A:",
     ("user", "Q\nStart your reply with exactly the following text, and continue it:\nA:")),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "   "}], "", ("assistant", "   ")),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "LS", "input": {}}]}], "", None),
])
def test_prefill(messages, prefill, last):
    request = parse(messages=messages, tools=[{"name": "LS", "input_schema": {"type": "object"}}])
    assert request.prefill == prefill
    if last is not None:
        assert request.chat.messages[-1] == last


@pytest.mark.parametrize(("prefix", "pieces", "out"), [
    ("{", ['{"a"', ": 1}"], '"a": 1}'),
    ("{", ["\n", " {", '"a":1}'], '"a":1}'),
    ("Answer:", ["Ans", "wer: 42"], " 42"),
    ("Answer:", ["Ans", "wer:"], ""),  # the whole answer is the prefill
    ("Answer:", ["Ans", "wer"], "Answer"),  # cut short of it: passed whole
    ("Answer:", ["An", "other"], "Another"),  # not repeated: passed whole
    ("", ["x"], "x"),
])
def test_prefix_trimmer(prefix, pieces, out):
    trimmer = ast.PrefixTrimmer(prefix)
    assert "".join(trimmer.feed(p) for p in pieces) + trimmer.flush() == out


@pytest.mark.parametrize(("messages", "param", "words"), [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "LS"}]},
      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r"},
                                   {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                "data": "not base64!"}}]}],
     "messages.2.content.1", "messages.2.content.1: the data is not valid base64"),
    ([{"role": "user", "content": [{"type": "text", "text": "x"},
                                   {"type": "image", "source": {"type": "url", "url": "ftp://x/a.png"}}]}],
     "messages.0.content.1", "messages.0.content.1.source.url must be an http(s) URL"),
])
def test_media_errors_name_the_messages_path(messages, param, words):
    with pytest.raises(InvalidRequest) as info:
        parse(system="be brief", messages=messages)
    assert info.value.param == param and words in info.value.message and "[" not in info.value.message


def test_prefix_trimmer_is_linear():
    started = time.monotonic()
    trimmer = ast.PrefixTrimmer("x" * 200_000)
    out = "".join(trimmer.feed(" " * 7) for _ in range(30_000)) + "".join(trimmer.feed("x" * 7) for _ in range(28_000))
    assert out == "" and not trimmer.done
    assert trimmer.flush() == " " * 210_000 + "x" * 196_000
    assert time.monotonic() - started < 2.0


def test_count_tokens_bodies_need_no_max_tokens():
    request = am.parse_messages_request({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "a"}]},
                                        counting=True)
    assert request.chat.max_tokens is None and not request.chat.stream


@pytest.mark.parametrize(("text", "tokens"), [
    ("", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100), ("你好", 2), ("héllo", 2), ("ab你好", 3),
])
def test_estimate_tokens(text, tokens):
    assert am.estimate_tokens(text) == tokens


# --------------------------------------------------------------------------- stop sequences


@pytest.mark.parametrize(("pieces", "sequences", "sent", "found"), [
    (["Hello ", "world"], [], "Hello world", None),
    (["Hello ", "ST", "OP here"], ["STOP"], "Hello ", "STOP"),
    (["aSTOPb"], ["STOP", "ST"], "a", "ST"),  # the earliest match wins, then the first listed
    (["no stop", " S"], ["STOP"], "no stop S", None),  # a held prefix is flushed at the end
    (["x\nEN", "D\n"], ["\nEND"], "x", "\nEND"),
    (["", "abc"], ["b"], "a", "b"),
])
def test_stop_scanner(pieces, sequences, sent, found):
    scanner = ast.StopScanner(sequences)
    out = "".join(scanner.feed(p) for p in pieces) + scanner.flush()
    assert (out, scanner.found) == (sent, found)


def test_stop_scanner_is_linear_on_adversarial_text():
    sequences = ["a" * 999 + "b", "a" * 500 + "c"] + [chr(0x4e00 + n) * 3 for n in range(60)]
    scanner = ast.StopScanner(sequences)
    started = time.monotonic()
    out = "".join(scanner.feed("a" * 7) for _ in range(200_000 // 7)) + scanner.flush()
    assert scanner.found is None and len(out) == 200_000 // 7 * 7
    assert time.monotonic() - started < 2.0


# --------------------------------------------------------------------------- events


def chunk(content=None, reasoning=None, tool_calls=None, finish=None):
    delta = {k: v for k, v in (("content", content), ("reasoning_content", reasoning), ("tool_calls", tool_calls))
             if v is not None}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 7,
                                  "prompt_tokens_details": {"cached_tokens": 10}}}


def run(chunks, stops=()):
    translator = ast.EventTranslator("msg_1", "claude-x", stops, input_tokens=40)
    events = translator.start()
    for c in chunks:
        events += translator.feed(c)
        if translator.stopped:
            break
    return events + translator.finish()


def shape(events):
    out = []
    for e in events:
        if e["type"] == "content_block_start":
            out.append(("start", e["index"], e["content_block"]["type"]))
        elif e["type"] == "content_block_delta":
            delta = e["delta"]
            out.append((delta["type"], e["index"], delta.get("text") or delta.get("thinking")
                        or delta.get("partial_json") or "sig"))
        elif e["type"] == "content_block_stop":
            out.append(("stop", e["index"]))
        elif e["type"] == "message_delta":
            out.append(("message_delta", e["delta"]["stop_reason"], e["delta"]["stop_sequence"]))
        else:
            out.append((e["type"],))
    return out


CALL = [{"index": 0, "id": "call_abc", "type": "function", "function": {"name": "LS", "arguments": ""}}]
ARGS = [{"index": 0, "function": {"arguments": '{"path":"/"}'}}]


@pytest.mark.parametrize(("chunks", "stops", "expected"), [
    ([chunk("Hi"), chunk(" there"), chunk(finish="stop"), USAGE], (), [
        ("message_start",), ("start", 0, "text"), ("text_delta", 0, "Hi"), ("text_delta", 0, " there"),
        ("stop", 0), ("message_delta", "end_turn", None), ("message_stop",)]),
    ([chunk(reasoning="Hmm"), chunk("Yes"), chunk(finish="length"), USAGE], (), [
        ("message_start",), ("start", 0, "thinking"), ("thinking_delta", 0, "Hmm"), ("signature_delta", 0, "sig"),
        ("stop", 0), ("start", 1, "text"), ("text_delta", 1, "Yes"), ("stop", 1),
        ("message_delta", "max_tokens", None), ("message_stop",)]),
    ([chunk("Looking."), chunk(tool_calls=CALL), chunk(tool_calls=ARGS), chunk(finish="tool_calls"), USAGE], (), [
        ("message_start",), ("start", 0, "text"), ("text_delta", 0, "Looking."), ("stop", 0),
        ("start", 1, "tool_use"), ("input_json_delta", 1, '{"path":"/"}'), ("stop", 1),
        ("message_delta", "tool_use", None), ("message_stop",)]),
    ([chunk("one END two"), chunk(" three"), chunk(finish="stop"), USAGE], ("END",), [
        ("message_start",), ("start", 0, "text"), ("text_delta", 0, "one "), ("stop", 0),
        ("message_delta", "stop_sequence", "END"), ("message_stop",)]),
    ([chunk("END"), chunk(finish="stop")], ("END",), [
        ("message_start",), ("message_delta", "stop_sequence", "END"), ("message_stop",)]),
    ([chunk(finish="stop"), USAGE], (), [("message_start",), ("message_delta", "end_turn", None), ("message_stop",)]),
    ([chunk("See [[1]]."), {"choices": [{"index": 0, "finish_reason": "stop", "delta": {"annotations": [
        {"type": "url_citation", "url_citation": {"url": "https://a.example", "title": "A"}}]}}]}], (), [
        ("message_start",), ("start", 0, "text"), ("text_delta", 0, "See [[1]]."), ("citations_delta", 0, "sig"),
        ("stop", 0), ("message_delta", "end_turn", None), ("message_stop",)]),
])
def test_event_sequences(chunks, stops, expected):
    assert shape(run(chunks, stops)) == expected


def test_usage_and_the_accumulated_message():
    events = run([chunk(reasoning="Plan."), chunk("Done."), chunk(tool_calls=CALL), chunk(tool_calls=ARGS),
                  chunk(finish="tool_calls"), USAGE])
    message = ast.accumulate(events)
    assert message["usage"] == {"input_tokens": 40, "output_tokens": 7, "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 10}
    thinking, text, call = message["content"]
    assert thinking == {"type": "thinking", "thinking": "Plan.", "signature": ast.signature("Plan.")}
    assert text == {"type": "text", "text": "Done."}
    assert call == {"type": "tool_use", "id": "toolu_abc", "name": "LS", "input": {"path": "/"}}
    assert (message["stop_reason"], message["stop_sequence"], message["model"]) == ("tool_use", None, "claude-x")
    assert message["usage"]["input_tokens"] == 40, "usage_of: prompt minus cached"


def test_thinking_nobody_asked_for_is_left_out():
    translator = ast.EventTranslator("msg_1", "claude-x", show_thinking=False)
    events = translator.start() + translator.feed(chunk(reasoning="hidden")) + translator.feed(chunk("Hi"))
    assert shape(events + translator.finish()) == [
        ("message_start",), ("start", 0, "text"), ("text_delta", 0, "Hi"), ("stop", 0),
        ("message_delta", "end_turn", None), ("message_stop",)]


@pytest.mark.parametrize(("thinking", "asked"), [(None, False), ({"type": "enabled"}, True),
                                                 ({"type": "adaptive"}, True), ({"type": "disabled"}, False)])
def test_whether_thinking_was_asked_for(thinking, asked):
    assert parse(thinking=thinking).thinking is asked


def test_usage_is_estimated_when_a_stop_sequence_cuts_the_turn():
    message = ast.accumulate(run([chunk("abcdefgh STOP")], ("STOP",)))
    assert message["usage"] == {"input_tokens": 40, "output_tokens": 3, "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 0}


def test_accumulating_a_long_answer_is_linear():
    started = time.monotonic()
    message = ast.accumulate(run([chunk("x" * 8)] * 100_000 + [chunk(finish="stop")]))
    assert len(message["content"][0]["text"]) == 800_000 and time.monotonic() - started < 5


def test_encode_event():
    assert ast.encode_event({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (405, "invalid_request_error"), (413, "request_too_large"),
    (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"), (503, "overloaded_error"),
    (504, "api_error"),
])
def test_error_types(status, kind):
    assert ast.error_body(status, "m") == {"type": "error", "error": {"type": kind, "message": "m"}}


# --------------------------------------------------------------------------- generated inputs

VALUES = [None, True, 0, -1, 5, 1.5, "", "x", "toolu_1", "claude-opus-4-1", [], {}, [{}], [None], {"type": None},
          {"type": "text"}, {"type": "text", "text": 5}, {"type": "image", "source": {"type": "base64"}},
          {"type": "tool_use", "id": 1, "name": []}, {"type": "tool_result", "content": {}},
          {"type": "document", "source": {"type": "content", "content": [5]}},
          {"type": "enabled", "budget_tokens": "9"}, {"type": "tool"}, {"role": "user"}]
FIELDS = ["model", "messages", "system", "max_tokens", "stream", "stop_sequences", "thinking", "tools",
          "tool_choice", "metadata"]


def mutate(rng, value, depth=0):
    """A random variation of a JSON value: replace, drop or nest parts of it."""
    if depth > 3 or rng.random() < 0.3:
        return rng.choice(VALUES)
    if isinstance(value, dict):
        out = {k: mutate(rng, v, depth + 1) if rng.random() < 0.5 else v for k, v in value.items()
               if rng.random() > 0.1}
        if rng.random() < 0.3:
            out[rng.choice(FIELDS + ["type", "content", "source", "role", "text", "input"])] = rng.choice(VALUES)
        return out
    if isinstance(value, list):
        return [mutate(rng, v, depth + 1) for v in value] + ([rng.choice(VALUES)] if rng.random() < 0.3 else [])
    return rng.choice(VALUES) if rng.random() < 0.5 else value


SEED_BODY = {
    "model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "stop_sequences": ["END"],
    "system": [{"type": "text", "text": "sys"}],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "tools": [{"name": "LS", "input_schema": {"type": "object", "properties": {"p": {"type": "string"}}}}],
    "tool_choice": {"type": "auto"},
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image", "source": {"type": "url", "url": "https://e.com/a.png"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "LS", "input": {"p": "/"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                                      "content": [{"type": "text", "text": "no"}]}]},
    ],
}


def test_generated_bodies_are_translated_or_refused_with_a_400():
    import random

    rng = random.Random(13)
    accepted = 0
    for _ in range(3000):
        body = mutate(rng, SEED_BODY)
        try:
            am.parse_messages_request(body)
            accepted += 1
        except InvalidRequest as exc:
            assert exc.status == 400 and exc.message
    assert 20 < accepted < 2980, "the generator reaches both outcomes"


def test_generated_chunk_streams_always_make_a_well_formed_message():
    import random

    rng = random.Random(7)
    pieces = [[chunk("te")], [chunk("xt END")], [chunk(reasoning="th")], [chunk(tool_calls=CALL), chunk(tool_calls=ARGS)],
              [chunk(tool_calls=[{"index": 1, "id": "call_b", "function": {"name": "X", "arguments": "{}"}}])],
              [chunk(finish="stop")], [chunk(finish="tool_calls")], [USAGE], [{"choices": []}], [chunk("")]]
    for _ in range(500):
        chunks = [c for _ in range(rng.randint(0, 12)) for c in rng.choice(pieces)]
        events = run(chunks, rng.choice([(), ("END",)]))
        names = [e["type"] for e in events]
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
        assert names.count("content_block_start") == names.count("content_block_stop")
        message = ast.accumulate(events)
        for block in message["content"]:
            assert block["type"] in {"text", "thinking", "tool_use"}
            if block["type"] == "thinking":
                assert block["signature"]


def test_messages_whose_blocks_are_all_empty_are_a_400():
    with pytest.raises(InvalidRequest, match="no message has any content"):
        am.parse_messages_request({"model": "qwen3.7-plus", "max_tokens": 5, "messages": [{"role": "user", "content": []}]})
