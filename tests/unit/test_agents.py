"""Tool calling and structured output as pure functions: options, prompts, folding, scanning, judging."""

from __future__ import annotations

import json
from itertools import count

import pytest

from transform import openai_chat as t
from transform import tool_prompts as a
from transform import tool_replies as r
from transform.answer import StreamTranslator
from errors import InvalidRequest, ModelOutputInvalid

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather\nof a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"enum": ["c", "f"], "default": "c"},
        "days": {"type": "integer"},
    }, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def spec(**body):
    body.setdefault("tools", [WEATHER, TIME])
    return a.parse_agent_spec(body)


def call_text(name="get_weather", **arguments):
    return a.format_call(name, arguments or {"city": "Paris"})


# ----------------------------------------------------------------- options


@pytest.mark.parametrize(("body", "expected"), [
    ({}, None),
    ({"tools": []}, None),
    ({"tools": [{"type": "web_search"}]}, None),
    ({"tools": [WEATHER]}, ("auto", None, True, None)),
    ({"tools": [WEATHER], "tool_choice": "none"}, ("none", None, True, None)),
    ({"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False}, ("required", None, False, None)),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     ("function", "get_weather", True, None)),
    ({"response_format": {"type": "json_object"}}, ("auto", None, True, "json_object")),
    ({"tool_choice": "none"}, None),
])
def test_parse_agent_spec(body, expected):
    result = a.parse_agent_spec(body)
    got = None if result is None else (result.choice, result.forced, result.parallel,
                                       result.output.kind if result.output else None)
    assert got == expected


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": {"a": 1}}, "tools"),
    ({"tools": ["x"]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": " "}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "a", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1]"),
    ({"tools": [WEATHER], "tool_choice": "any"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": []}}}, "response_format.json_schema.schema"),
])
def test_bad_agent_options_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as info:
        a.parse_agent_spec(body)
    assert info.value.param == param


# ----------------------------------------------------------------- prompts


def test_tools_are_described_compactly_with_the_call_format():
    text = a.describe_tools(spec().tools)
    assert '- get_weather({city: string, unit?: "c" | "f", days?: integer}): Current weather of a city.' in text
    assert '    unit: (default: "c")' in text and "    city: City name" in text
    assert "- get_time({})" in text
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in text


@pytest.mark.parametrize(("schema", "ts"), [
    ({"type": "array", "items": {"type": "string"}}, "string[]"),
    ({"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, "(string | null)[]"),
    ({"type": ["string", "null"]}, "string | null"),
    ({"$ref": "#/$defs/P", "$defs": {"P": {"type": "object", "properties": {"x": {"type": "number"}},
                                           "required": ["x"]}}}, "{x: number}"),
    ({"const": "a"}, '"a"'),
    ({}, "any"),
])
def test_schema_as_typescript(schema, ts):
    assert a._ts(schema, schema, 1) == ts


@pytest.mark.parametrize(("body", "fresh", "has_tools", "rule"), [
    ({}, True, True, None),
    ({}, False, False, None),
    ({"tool_choice": "none"}, True, True, "Do not call any function"),
    ({"tool_choice": "required"}, False, False, "must call at least one function"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, True, True, "call the function get_time"),
    ({"parallel_tool_calls": False}, True, True, "at most one function"),
    ({"tools": None, "response_format": {"type": "json_object"}}, True, False, "only one valid JSON object"),
    ({"tools": None, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}},
     False, False, 'JSON Schema, without prose or code fences:\n{"type":"object"}'),
])
def test_compose_turn(body, fresh, has_tools, rule):
    text = a.compose_turn(spec(**body), "USER TEXT", fresh)
    assert ("# Tools" in text) is has_tools and "USER TEXT" in text
    if rule:
        assert text.index("USER TEXT") < text.index(rule)
    else:
        assert text.endswith("USER TEXT")


def test_no_spec_leaves_the_turn_alone():
    assert a.compose_turn(None, "hi", True) == "hi"


# ----------------------------------------------------------------- history


def test_history_folding_uses_the_call_format():
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
             {"id": "call_3", "type": "function", "function": {"name": "x", "arguments": "not json"}}]
    assert a.fold_tool_calls(calls) == "\n".join([
        call_text(), a.format_call("get_time", {}), a.format_call("x", "not json")])
    assert a.call_names([{"tool_calls": calls}, {"role": "user"}])["call_2"] == "get_time"
    assert a.fold_tool_result("", "", "r") == "<tool_response>\nr\n</tool_response>"


# ----------------------------------------------------------------- scanning


def scan(text, size, hold=False):
    scanner = r.CallScanner(hold=hold)
    shown = "".join(scanner.feed(text[i:i + size]) for i in range(0, len(text), size))
    scanner.finish()
    return shown, scanner


CASES = [
    # (answer, prose, number of blocks, streamed before the end)
    ("Plain answer, no call at all.", "Plain answer, no call at all.", 0, "Plain answer, no call at all."),
    ("Let me check.\n" + call_text(), "Let me check.\n", 1, "Let me check.\n"),
    (call_text() + "\n" + call_text("get_time"), "", 2, ""),
    ("```xml\n" + call_text() + "\n```", "", 1, ""),
    ("Sure.\n```\n" + call_text() + "\n```\nDone!", "Sure.\n", 1, "Sure.\n"),
    (call_text() + "\n<tool_response>\nsunny\n</tool_response>\nIt is sunny.", "", 1, ""),
    ("<TOOL_CALL>" + json.dumps({"name": "get_time", "arguments": {}}) + "</TOOL_CALL>", "", 1, ""),
    ("<tool_call>{\"name\": \"get_time\"}<tool_call>{\"name\": \"get_weather\"}", "", 2, ""),
    ("a < b and <tool is not a call", "a < b and <tool is not a call", 0, "a < b and <tool is not a call"),
    ('{"name": "get_time", "arguments": {}}', '{"name": "get_time", "arguments": {}}', 0, ""),
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(("answer", "prose", "blocks", "streamed"), CASES)
def test_scanner_splits_prose_and_calls_at_any_chunking(answer, prose, blocks, streamed, size):
    shown, scanner = scan(answer, size)
    assert scanner.prose == prose and len(scanner.blocks) == blocks
    assert streamed.startswith(shown) and prose.startswith(shown)
    if size == 1000:
        assert shown == streamed


def test_scanner_holds_only_a_possible_tag_start():
    scanner = r.CallScanner()
    assert scanner.feed("Hello <tool_c") == "Hello "
    assert scanner.feed("ar") == "<tool_car"
    assert scanner.feed("\n```") == "\n"


def test_hold_sends_nothing_until_the_end():
    shown, scanner = scan("All of it.\n" + call_text(), 3, hold=True)
    assert shown == "" and scanner.prose == "All of it.\n"


# ----------------------------------------------------------------- parsing and checking


@pytest.mark.parametrize(("block", "calls"), [
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', [("get_weather", {"city": "Paris"}, [])]),
    ('```json\n{"name": "get_weather", "arguments": {"city": "Rome",}}\n```', [("get_weather", {"city": "Rome"}, [])]),
    ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\", \\"days\\": \\"3\\"}"}',
     [("get_weather", {"city": "Oslo", "days": 3}, [])]),
    ('{"function": {"name": "GET_TIME", "arguments": "{}"}}', [("get_time", {}, [])]),
    ('{"name": "get_weather", "parameters": {"city": "Bern"}}', [("get_weather", {"city": "Bern"}, [])]),
    ('[{"name": "get_time"}, {"name": "get_weather", "arguments": {"city": "X"}}]',
     [("get_time", {}, []), ("get_weather", {"city": "X"}, [])]),
    ('{"name": "get_weather", "arguments": {"days": "soon"}}',
     [("get_weather", {"days": "soon"}, ["get_weather arguments.city is required",
                                         "get_weather arguments.days must be integer, not string"])]),
    ('{"name": "launch", "arguments": {}}', [("launch", {}, ["there is no function named 'launch' "
                                                             "(offered: get_weather, get_time)"])]),
    ("I would call the weather tool", [("", None, ["this block is not a JSON call: I would call the weather tool"])]),
])
def test_parse_calls(block, calls):
    got = [(c.name, c.arguments, c.problems) for c in r.parse_calls([block], spec())]
    assert got == calls


def test_named_choice_rejects_other_functions():
    forced = spec(tool_choice={"type": "function", "function": {"name": "get_time"}})
    [call] = r.parse_calls([call_text()], forced)
    assert call.problems == ["this reply must call get_time, not get_weather"] and not call.known


@pytest.mark.parametrize(("text", "names", "rest"), [
    ('```json\n{"name": "get_time", "arguments": {}}\n```', ["get_time"], ""),
    ('{"name": "get_time"}', ["get_time"], ""),
    ('{"name": "unknown", "arguments": {}}', [], '{"name": "unknown", "arguments": {}}'),
    ('{"city": "Paris"}', [], '{"city": "Paris"}'),
])
def test_bare_json_calls(text, names, rest):
    calls, prose = r.bare_calls(text, spec())
    assert [c.name for c in calls] == names and prose == rest


# ----------------------------------------------------------------- judging


def test_judge_table():
    auto, required = spec(), spec(tool_choice="required")
    good = r.check_call("get_weather", {"city": "Paris"}, auto)
    bad = r.check_call("get_weather", {}, auto)
    assert r.judge("Hi", [], auto, False) == r.Verdict("Hi", [], [])
    assert r.judge("  ", [good], auto, False).content is None
    assert r.judge("Checking. ", [good], auto, False).content == "Checking."
    assert r.judge("", [bad], auto, False).complaint.startswith("Your function call could not be used")
    assert "must call one of the functions" in r.judge("Hi", [], required, False).complaint
    assert r.judge("Hi", [], required, True) == r.Verdict("Hi", [], [])  # cut by max_tokens: as it is
    single = spec(parallel_tool_calls=False)
    assert len(r.judge("", [good, bad], single, False).calls) == 1
    assert r.judge("", [good, bad], single, False).problems == []


@pytest.mark.parametrize(("fmt", "answer", "content", "problems"), [
    ({"type": "json_object"}, 'Here:\n```json\n{"a": 1}\n```', '{"a": 1}', []),
    ({"type": "json_object"}, "[1, 2]", None, ["the reply must be a JSON object"]),
    ({"type": "json_object"}, "no idea", None, ["the reply holds no JSON value"]),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "object", "required": ["x"]}}},
     '{"y": 1}', None, ["$.x is required"]),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "array"}}}, "[1, 'b']", '[1, "b"]', []),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}},
     '{"n": "2"}', '{"n": 2}', []),
])
def test_judge_json(fmt, answer, content, problems):
    verdict = r.judge(answer, [], a.parse_agent_spec({"response_format": fmt}), False)
    assert verdict.problems == problems
    if content is not None:
        assert verdict.content == content
    else:
        assert verdict.complaint.startswith("Your reply was not")


# ----------------------------------------------------------------- the translator


def events(answer, size=4, thinking=""):
    out = [{"response.created": {"chat_id": "c", "parent_id": "p", "response_id": "r1"}}]
    if thinking:
        out.append({"choices": [{"delta": {"content": "", "phase": "thinking_summary",
                                           "extra": {"summary_thought": {"content": [thinking]}}}}]})
    out += [{"choices": [{"delta": {"content": answer[i:i + size], "phase": "answer", "status": "typing"}}],
             "usage": {"input_tokens": 10, "output_tokens": 5}} for i in range(0, len(answer), size)]
    out.append({"choices": [{"delta": {"content": "", "phase": "answer", "status": "finished"}}]})
    return out


def translator(agent_spec, include_usage=False):
    ids = count(1)
    make = lambda: StreamTranslator("chatcmpl-1", "m", 1, include_usage)  # noqa: E731
    return r.translator_for(agent_spec, make, lambda: f"call_{next(ids)}")


def run(tr, answers, thinking=""):
    """Chunks the way Turn drives a translator, with corrective turns from ``answers``."""
    chunks = []
    answers = list(answers)
    while True:
        for event in events(answers.pop(0), thinking=thinking):
            chunks += tr.feed(event)
        chunks += tr.conclude(can_retry=bool(answers))
        if tr.retry_prompt is None:
            break
        tr.retry()
    return chunks + tr.finish()


def deltas(chunks):
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def test_plain_requests_get_the_plain_translator():
    assert isinstance(translator(None), StreamTranslator)
    assert isinstance(translator(spec(tool_choice="none")), StreamTranslator)


def test_stream_fragments_follow_the_strict_rules():
    tr = translator(spec(), include_usage=True)
    chunks = run(tr, ["Checking both.\n" + call_text() + "\n" + a.format_call("get_time", {})], thinking="hmm")
    ds = deltas(chunks)
    assert ds[0] == {"role": "assistant", "reasoning_content": "hmm"}
    assert "".join(d.get("content") or "" for d in ds) == "Checking both.\n"
    fragments = [d["tool_calls"][0] for d in ds if "tool_calls" in d]
    assert fragments == [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"city":"Paris"}'}},
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        {"index": 1, "function": {"arguments": "{}"}},
    ]
    assert all(len(d["tool_calls"]) == 1 for d in ds if "tool_calls" in d)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 10
    message = tr.completion()["choices"][0]["message"]
    assert message["content"] == "Checking both." and [c["id"] for c in message["tool_calls"]] == ["call_1", "call_2"]
    assert tr.completion()["choices"][0]["finish_reason"] == "tool_calls"


def test_answer_without_call_is_plain_content():
    tr = translator(spec())
    chunks = run(tr, ["Just text <b>bold</b>."])
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == "Just text <b>bold</b>."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert tr.completion()["choices"][0]["message"]["content"] == "Just text <b>bold</b>." and not tr.tool_calls


def test_required_without_call_is_corrected_once():
    tr = translator(spec(tool_choice="required"), include_usage=True)
    chunks = run(tr, ["I think it is sunny.", call_text()])
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == ""
    assert [c["function"]["name"] for c in tr.tool_calls] == ["get_weather"]
    assert chunks[-1]["usage"]["prompt_tokens"] == 20  # both upstream turns are counted


def test_required_without_call_twice_is_an_error():
    tr = translator(spec(tool_choice="required"))
    with pytest.raises(ModelOutputInvalid) as info:
        run(tr, ["No.", "Still no."])
    assert "did not comply with the tool-call format" in info.value.message and info.value.status == 502


def test_bad_arguments_are_corrected_or_passed_on_unless_strict():
    tr = translator(spec())
    run(tr, [call_text(days="x"), call_text(days="y")])
    assert json.loads(tr.tool_calls[0]["function"]["arguments"]) == {"days": "y"}
    strict_tool = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    with pytest.raises(ModelOutputInvalid):
        run(translator(spec(tools=[strict_tool])), [call_text(days="x"), call_text(days="y")])


def test_json_schema_output_is_held_validated_and_corrected():
    fmt = {"type": "json_schema", "json_schema": {"name": "P", "strict": True, "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}}}
    tr = translator(a.parse_agent_spec({"response_format": fmt}))
    chunks = run(tr, ['Sure: {"m": 1}', '```json\n{"n": 2}\n```'])
    assert [d.get("content") for d in deltas(chunks) if d.get("content")] == ['{"n": 2}']
    assert tr.completion()["choices"][0]["message"]["content"] == '{"n": 2}'
    with pytest.raises(ModelOutputInvalid) as info:
        run(translator(a.parse_agent_spec({"response_format": fmt})), ["nope", '{"m": 1}'])
    assert "did not comply with response_format" in info.value.message and "$.n is required" in info.value.message
