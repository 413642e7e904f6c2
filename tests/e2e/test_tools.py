"""Tool calling end to end: the openai SDK, LangChain and raw SSE against the proxy and the emulator."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from transform.tool_prompts import format_call
from tests.helpers import API_KEY

MODEL = "qwen3.7-plus"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]


def call(name="get_weather", city="Paris"):
    return format_call(name, {"city": city})


def sent_messages(fake):
    return [r.json["messages"][0]["content"] for r in fake.requests_to("/api/v2/chat/completions")]


def collect_stream(client, **kwargs):
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("messages", ASK)
    return list(client.chat.completions.create(stream=True, **kwargs))


def fragments(chunks):
    return [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]


def test_non_stream_tool_call(client, fake):
    fake.script("I will check.\n" + call())
    completion = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [tool_call] = choice.message.tool_calls
    assert tool_call.id.startswith("call_") and tool_call.type == "function"
    assert tool_call.function.name == "get_weather" and json.loads(tool_call.function.arguments) == {"city": "Paris"}
    assert choice.message.content == "I will check."
    prompt = sent_messages(fake)[-1]
    assert "- get_weather({city: string}): Current weather of a city." in prompt and prompt.endswith(ASK[0]["content"])


def test_non_stream_call_alone_has_null_content(client, fake):
    fake.script(call())
    message = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER]).choices[0].message
    assert message.content is None and len(message.tool_calls) == 1


def test_streamed_parallel_calls(client, fake):
    fake.configure(chunk_chars=3)
    fake.script("Let me look both up.\n```xml\n" + call() + "\n" + call("get_time") + "\n```\n<tool_response>made up")
    chunks = collect_stream(client, tools=[WEATHER, TIME])
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Let me look both up.\n"
    parts = fragments(chunks)
    assert [(p.index, p.id is not None) for p in parts] == [(0, True), (0, False), (1, True), (1, False)]
    assert [p.function.name for p in parts if p.id] == ["get_weather", "get_time"]
    assert len({p.id for p in parts if p.id}) == 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_raw_sse_fragments_are_exactly_what_strict_clients_parse(proxy, fake):
    fake.script(call() + call("get_time", "Rome"))
    body = {"model": MODEL, "messages": ASK, "tools": [WEATHER, TIME], "stream": True}
    with requests.post(proxy.url + "/v1/chat/completions", json=body, stream=True, timeout=20,
                       headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    events = [json.loads(line[6:]) for line in lines[:-1]]
    calls = [e["choices"][0]["delta"]["tool_calls"] for e in events if "tool_calls" in e["choices"][0]["delta"]]
    assert all(len(c) == 1 for c in calls)
    assert [c[0] for c in calls] == [
        {"index": 0, "id": calls[0][0]["id"], "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"city":"Paris"}'}},
        {"index": 1, "id": calls[2][0]["id"], "type": "function", "function": {"name": "get_time", "arguments": ""}},
        {"index": 1, "function": {"arguments": '{"city":"Rome"}'}},
    ]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None] * (len(events) - 1)


def test_full_tool_loop(client, fake):
    fake.script(call(), "It is sunny in Paris, 21 °C.")
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
    assistant = first.choices[0].message
    history = ASK + [assistant.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": assistant.tool_calls[0].id, "content": '{"sky": "sunny"}'}]
    final = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])
    assert final.choices[0].message.content == "It is sunny in Paris, 21 °C." and final.choices[0].finish_reason == "stop"
    second = sent_messages(fake)[-1]
    assert f'<tool_response name="get_weather" tool_call_id="{assistant.tool_calls[0].id}">\n{{"sky": "sunny"}}' in second


def test_stream_helper_with_a_pydantic_tool(client, fake):
    from pydantic import BaseModel

    class GetWeather(BaseModel):
        city: str

    fake.script('<tool_call>\n{"name": "GetWeather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=[openai.pydantic_function_tool(GetWeather)]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    tool_call = final.choices[0].message.tool_calls[0]
    assert tool_call.function.parsed_arguments == GetWeather(city="Oslo")


def test_langchain_bind_tools_streams_complete_tool_call_chunks(proxy, fake):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        return "sunny"

    fake.script("Checking.\n" + call())
    llm = ChatOpenAI(model=MODEL, base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0, timeout=20)
    chunks = list(llm.bind_tools([get_weather]).stream("Weather in Paris?"))
    assert sum(len(c.tool_call_chunks) for c in chunks) == 2
    message = chunks[0]
    for chunk in chunks[1:]:
        message += chunk
    assert message.content == "Checking.\n"
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert message.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(("choice", "replies", "calls", "content"), [
    ("auto", ["No tool needed."], [], "No tool needed."),
    ("none", ["Plain " + call()], [], "Plain " + call()),
    ("required", ["Hmm.", call()], ["get_weather"], None),
    ({"type": "function", "function": {"name": "get_time"}}, [call(), call("get_time")], ["get_time"], None),
])
def test_tool_choice_variants(client, fake, choice, replies, calls, content):
    fake.script(*replies)
    message = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=choice).choices[0].message
    assert [c.function.name for c in message.tool_calls or []] == calls and message.content == content
    prompts = sent_messages(fake)
    assert len(prompts) == len(replies)
    if choice == "none":
        assert "Do not call any function" in prompts[0]
    if len(replies) == 2:
        assert prompts[1].startswith("You did not call a function") or prompts[1].startswith("Your function call")


def test_required_without_a_call_is_a_clear_error(client, fake):
    fake.script("No.", "Still no.")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required")
    assert info.value.code == "model_output_invalid" and "corrective retry" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"


def test_corrective_turn_continues_the_same_upstream_chat(client, fake):
    fake.script("```json\n{\"city\": \"Paris\"}\n```", call())
    message = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required").choices[0].message
    assert message.tool_calls[0].function.name == "get_weather"
    first, second = fake.requests_to("/api/v2/chat/completions")
    assert first.query["chat_id"] == second.query["chat_id"]
    [chat] = [c for c in fake.chats.values() if c["id"] == first.query["chat_id"]]
    assert second.json["parent_id"] == chat["turns"][0]["response_id"]


@pytest.mark.parametrize("stream", [False, True])
def test_text_tool_protocols_pass_through_without_tools(client, fake, stream):
    answer = ("I will read it.\n<tool_use>\n  <name>read_file</name>\n  <arguments>{\"path\": \"a.txt\"}</arguments>\n"
              "</tool_use>\n<read_file><path>b.txt</path></read_file>\n" + call())
    fake.configure(answer=answer, chunk_chars=5)
    if stream:
        chunks = collect_stream(client)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
        assert not fragments(chunks) and chunks[-1].choices[0].finish_reason == "stop"
    else:
        message = client.chat.completions.create(model=MODEL, messages=ASK).choices[0].message
        assert message.content == answer and message.tool_calls is None


def test_a_model_that_will_not_comply_is_not_the_accounts_fault(make_proxy, fake):
    from tests.helpers import TOKEN
    from tests.fake_qwen import make_jwt

    proxy = make_proxy(COOKIE=f"token={TOKEN}|||token={make_jwt('fake-user-0002')}")
    fake.script("No.", "Still no.", call())
    with pytest.raises(openai.InternalServerError):
        proxy.client().chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required")
    assert len(fake.requests_to("/api/v2/chat/completions")) == 2, "no failover to another account"
    health = requests.get(proxy.url + "/health", timeout=5).json()
    assert health["accounts"]["healthy"] == 2
    assert [a["failed"] for a in health["accounts"]["accounts"]] == [0, 0]
