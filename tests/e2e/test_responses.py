"""The Responses API end to end: the `openai` SDK's `responses.*`, used as Codex CLI uses it → proxy → emulator."""

from __future__ import annotations

import base64
import json
import time

import openai
import pytest
import requests
from pydantic import BaseModel

from tests.helpers import API_KEY, chats_used
from transform.tool_prompts import format_call

MODEL = "qwen3.7-plus"
COMPLETIONS = "/api/v2/chat/completions"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather of a city.", "strict": False,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
SOURCES = [
    {"title": "Python docs", "url": "https://docs.python.org/3/", "hostname": "docs.python.org", "snippet": "…"},
    {"title": "PEP 8", "url": "https://peps.python.org/pep-0008/", "hostname": "peps.python.org", "snippet": "…"},
]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16


class City(BaseModel):
    name: str
    population: int


def turns(fake):
    """(chat id, parent id, message text, feature_config) of every turn the site received."""
    return [(r.query["chat_id"], r.json["parent_id"], r.json["messages"][0]["content"],
             r.json["messages"][0]["feature_config"]) for r in fake.requests_to(COMPLETIONS)]


def raw(proxy, body, method="post", path="/v1/responses"):
    return requests.request(method, proxy.url + path, json=body, timeout=20, stream=body.get("stream", False),
                            headers={"Authorization": f"Bearer {API_KEY}"})


def sse(resp):
    """(event name, data) pairs of a raw Responses stream; comments (pings) skipped."""
    out = []
    for block in resp.content.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            name = next(line[7:] for line in lines if line.startswith("event: "))
            out.append((name, json.loads(next(line[6:] for line in lines if line.startswith("data: ")))))
    return out


# ------------------------------------------------------------------ text, thinking, streaming


def test_create_with_instructions_and_thinking(client, fake):
    fake.configure(thinking=["The user greets me."], answer="Hello, friend.")
    response = client.responses.create(model=MODEL, instructions="Be warm.", input="Hi!",
                                       reasoning={"effort": "high", "summary": "auto"})
    assert response.object == "response" and response.status == "completed" and response.id.startswith("resp_")
    assert response.output_text == "Hello, friend."
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and [s.text for s in reasoning.summary] == ["The user greets me."]
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert response.usage.input_tokens == 812 and response.usage.output_tokens_details.reasoning_tokens > 0
    assert response.instructions == "Be warm." and response.model == MODEL and response.reasoning.effort == "high"
    [(_, parent, text, features)] = turns(fake)
    assert parent is None and text == "<system>\nBe warm.\n</system>\n<user>\nHi!\n</user>"
    assert features["thinking_enabled"] is True and features["thinking_mode"] == "Thinking"


@pytest.mark.parametrize(("effort", "mode"), [("minimal", "Fast"), ("none", "Fast"), ("low", "Thinking"),
                                              (None, "Auto")])
def test_reasoning_effort_is_the_thinking_switch(client, fake, effort, mode):
    reasoning = {"effort": effort} if effort else None
    client.responses.create(model=MODEL, input="2+2?", **({"reasoning": reasoning} if reasoning else {}))
    assert turns(fake)[-1][3]["thinking_mode"] == mode


def test_stream_helper_accumulates_the_final_response(client, fake):
    fake.configure(thinking=["Counting."], answer="One, two, three, four.", chunk_chars=3)
    with client.responses.stream(model=MODEL + "-thinking", input="Count to four.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed" and "response.reasoning_summary_text.delta" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert text == final.output_text == "One, two, three, four." and summary == "Counting."
    assert [e.text for e in events if e.type == "response.output_text.done"] == [text]
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert client.responses.retrieve(final.id).output_text == text


def test_a_streamed_response_is_stored_before_it_is_announced_complete(proxy, fake):
    """A client may continue the moment it reads response.completed, before the server's stream has ended."""
    fake.configure(reply=lambda text: f"re: {text}")
    store = proxy.app.extensions["qwen2openai"].responses
    put = store.put
    store.put = lambda record: (time.sleep(0.5), put(record))  # a slow store widens any window to see
    client, other = proxy.client(), proxy.client()
    with client.responses.stream(model=MODEL, input="first") as stream:
        for event in stream:
            if event.type == "response.completed":
                follow = other.responses.create(model=MODEL, input="second", previous_response_id=event.response.id)
    assert follow.output_text == "re: second"


def test_raw_stream_names_every_event_and_item(proxy, fake):
    fake.configure(answer="Plain text.")
    resp = raw(proxy, {"model": MODEL, "input": "Say it.", "stream": True})
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = sse(resp)
    assert all(name == data["type"] for name, data in events)
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * (len(events) - 8), "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    created, completed = events[0][1]["response"], events[-1][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and completed["id"] == created["id"]
    [message] = completed["output"]
    assert message["content"] == [{"type": "output_text", "text": "Plain text.", "annotations": [], "logprobs": []}]
    item_ids = {data["item_id"] for _, data in events if "item_id" in data}
    assert item_ids == {message["id"]} and message["id"].startswith("msg_")


def test_max_output_tokens_ends_incomplete(client, fake):
    fake.configure(answer="word " * 200, chunk_chars=5)
    response = client.responses.create(model=MODEL, input="Talk.", max_output_tokens=16)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert 0 < len(response.output_text) < 1000


# ------------------------------------------------------------------ tools


def test_function_call_loop_with_function_call_output(client, fake):
    fake.script("Let me check.\n" + format_call("get_weather", {"city": "Paris"}), "Sunny, 21 °C in Paris.")
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
    message, call = first.output
    assert message.type == "message" and first.output_text.strip() == "Let me check."
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris"} and call.id.startswith("fc_")
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}])
    assert second.output_text == "Sunny, 21 °C in Paris." and second.previous_response_id == first.id
    (chat, _, _, _), (chat2, parent, text, _) = turns(fake)
    assert chat2 == chat and parent == fake.chats[chat]["turns"][0]["response_id"], "the same upstream chat"
    assert text.startswith(f'<tool_response name="get_weather" tool_call_id="{call.call_id}">\n{{"sky": "sunny"}}')


def test_codex_style_full_input_without_store_continues_the_chat(client, fake):
    """Codex CLI sends store=false and the whole conversation each time, reasoning items included."""
    fake.configure(thinking=["Need the weather."])
    fake.script(format_call("get_weather", {"city": "Oslo"}), "Cold in Oslo.")
    ask = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]}]
    first = client.responses.create(model=MODEL + "-thinking", instructions="You are a coding agent.", input=ask,
                                    tools=[WEATHER], store=False, reasoning={"effort": "medium", "summary": "auto"})
    assert [item.type for item in first.output] == ["reasoning", "function_call"]
    call = first.output[1]
    history = ask + [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "-3 °C"})
    second = client.responses.create(model=MODEL + "-thinking", instructions="You are a coding agent.",
                                     input=history, tools=[WEATHER], store=False)
    assert second.output_text == "Cold in Oslo."
    (chat, _, _, _), (chat2, parent, text, _) = turns(fake)
    assert chat2 == chat and parent is not None and text.startswith("<tool_response")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_streamed_function_call_events(client, fake):
    fake.script(format_call("get_weather", {"city": "Rome"}))
    with client.responses.stream(model=MODEL, input="Weather in Rome?", tools=[WEATHER],
                                 tool_choice="required") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(done.arguments) == {"city": "Rome"}
    [call] = final.output
    assert call.type == "function_call" and call.status == "completed" and call.arguments == done.arguments
    assert "You must call at least one function" in turns(fake)[-1][2]


def test_named_tool_choice_and_parallel_calls(client, fake):
    fake.script(format_call("get_weather", {"city": "A"}) + format_call("get_weather", {"city": "B"}))
    response = client.responses.create(model=MODEL, input="Both?", tools=[WEATHER],
                                       tool_choice={"type": "function", "name": "get_weather"})
    assert [json.loads(c.arguments)["city"] for c in response.output] == ["A", "B"]
    assert len({c.call_id for c in response.output}) == 2
    assert "You must call the function get_weather" in turns(fake)[-1][2]


# ------------------------------------------------------------------ structured output, search, media


def test_parse_with_a_pydantic_text_format(client, fake):
    fake.script('```json\n{"name": "Paris", "population": "2100000"}\n```')
    response = client.responses.parse(model=MODEL, input="Describe Paris.", text_format=City)
    assert response.output_parsed == City(name="Paris", population=2100000)
    assert '"required":["name","population"]' in turns(fake)[-1][2]


def test_web_search_tool_gives_url_citations(client, fake):
    fake.configure(answer="Style is in PEP 8 [[2]].", search_results=SOURCES)
    response = client.responses.create(model=MODEL, input="Python style?", tools=[{"type": "web_search"}])
    [message] = response.output
    cited, listed = message.content[0].annotations
    assert (cited.type, cited.url, cited.title) == ("url_citation", "https://peps.python.org/pep-0008/", "PEP 8")
    assert response.output_text[cited.start_index:cited.end_index] == "[[2]]"
    assert listed.url == "https://docs.python.org/3/" and listed.start_index == listed.end_index == 0
    sent = fake.requests_to(COMPLETIONS)[-1].json["messages"][0]
    assert sent["chat_type"] == "search" and sent["feature_config"]["auto_search"] is True


def test_streamed_search_citations_arrive_with_the_text(client, fake):
    fake.configure(answer="See [[1]].", search_results=SOURCES)
    with client.responses.stream(model=MODEL, input="Docs?", tools=[{"type": "web_search_preview"}]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    added = [e.annotation.url for e in events if e.type == "response.output_text.annotation.added"]
    assert added == ["https://docs.python.org/3/", "https://peps.python.org/pep-0008/"]
    assert [a.url for a in final.output[0].content[0].annotations] == added


def test_input_image_is_uploaded_with_the_turn(client, fake):
    fake.configure(answer="A test pattern.")
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    response = client.responses.create(model=MODEL, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": url}]}])
    assert response.output_text == "A test pattern."
    message = fake.requests_to(COMPLETIONS)[-1].json["messages"][0]
    assert message["content"] == "What is this?"
    [entry] = message["files"]
    assert entry["type"] == "image" and entry["size"] == len(PNG)


# ------------------------------------------------------------------ stored responses


def test_previous_response_id_continues_the_upstream_chat(client, fake):
    fake.configure(reply=lambda text: f"answer to {text[-8:]}")
    first = client.responses.create(model=MODEL, instructions="Be brief.", input="question")
    second = client.responses.create(model=MODEL, input="next one", previous_response_id=first.id)
    third = client.responses.create(model=MODEL, input="and more", previous_response_id=second.id)
    assert third.output_text == "answer to and more"
    sent = turns(fake)
    [chat] = {chat for chat, _, _, _ in sent}
    assert [text for _, _, text, _ in sent][1:] == ["next one", "and more"], "only the new input is sent"
    responses = [t["response_id"] for t in fake.chats[chat]["turns"]]
    assert [parent for _, parent, _, _ in sent] == [None, *responses[:2]]
    assert chats_used(fake) == [chat]


def test_new_instructions_start_a_fresh_chat_with_the_history(client, fake):
    fake.configure(reply=lambda text: "ok")
    first = client.responses.create(model=MODEL, instructions="Be brief.", input="one")
    client.responses.create(model=MODEL, instructions="Be verbose.", input="two", previous_response_id=first.id)
    (chat, _, _, _), (chat2, parent, text, _) = turns(fake)
    assert chat2 != chat and parent is None
    assert text == ("<system>\nBe verbose.\n</system>\n<user>\none\n</user>\n<assistant>\nok\n</assistant>\n"
                    "<user>\ntwo\n</user>")


def test_unknown_previous_response_id_is_a_400(client, fake):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")
    assert info.value.code == "previous_response_not_found" and info.value.param == "previous_response_id"
    assert "resp_nope" in info.value.message and "input" in info.value.message
    assert not fake.requests_to(COMPLETIONS)


def test_store_false_is_not_kept_and_delete_forgets(client, fake):
    kept = client.responses.create(model=MODEL, input="keep")
    unkept = client.responses.create(model=MODEL, input="drop", store=False)
    assert client.responses.retrieve(kept.id).id == kept.id
    for missing in (unkept.id, "resp_unknown"):
        with pytest.raises(openai.NotFoundError) as info:
            client.responses.retrieve(missing)
        assert info.value.code == "response_not_found"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="more", previous_response_id=unkept.id)
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)


# ------------------------------------------------------------------ LangChain on the Responses API


def test_langchain_with_use_responses_api(proxy, fake):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    def get_weather(city: str) -> str:
        """Current weather of a city."""
        return "sunny"

    llm = ChatOpenAI(model=MODEL, base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0, timeout=20,
                     use_responses_api=True, use_previous_response_id=True)
    fake.script(format_call("get_weather", {"city": "Paris"}), '{"name": "Oslo", "population": 700000}',
                "one", "two")
    assert llm.bind_tools([get_weather]).invoke("Weather in Paris?").tool_calls[0]["args"] == {"city": "Paris"}
    assert llm.with_structured_output(City).invoke("Describe Oslo.") == City(name="Oslo", population=700000)
    first = llm.invoke([HumanMessage("q1")])
    second = llm.invoke([HumanMessage("q1"), first, HumanMessage("q2")])
    assert first.text == "one" and second.text == "two"
    *_, (chat, _, _, _), (chat2, parent, text, _) = turns(fake)
    assert chat2 == chat and parent and text == "q2", "previous_response_id continued the upstream chat"
