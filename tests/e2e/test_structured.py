"""Structured output end to end: response_format json_object / json_schema with the openai SDK helpers."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from tests.helpers import API_KEY

MODEL = "qwen3.7-plus"
ASK = [{"role": "user", "content": "Describe Paris as JSON."}]


class City(BaseModel):
    name: str
    population: int
    rivers: list[str]


def prompts(fake):
    return [r.json["messages"][0]["content"] for r in fake.requests_to("/api/v2/chat/completions")]


def test_parse_with_a_pydantic_model(client, fake):
    fake.script('Here you go:\n```json\n{"name": "Paris", "population": "2100000", "rivers": ["Seine"],}\n```')
    completion = client.chat.completions.parse(model=MODEL, messages=ASK, response_format=City)
    message = completion.choices[0].message
    assert json.loads(message.content) == {"name": "Paris", "population": 2100000, "rivers": ["Seine"]}
    assert message.parsed == City(name="Paris", population=2100000, rivers=["Seine"])
    assert '"required":["name","population","rivers"]' in prompts(fake)[0]


def test_stream_helper_with_response_format(client, fake):
    fake.configure(chunk_chars=4, thinking=["Let me think."])
    fake.script('{"name": "Paris", "population": 2100000, "rivers": ["Seine"]}')
    with client.chat.completions.stream(model=MODEL + "-thinking", messages=ASK, response_format=City) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "content.done" in kinds and "reasoning" not in kinds
    assert final.choices[0].message.parsed == City(name="Paris", population=2100000, rivers=["Seine"])
    assert final.choices[0].message.model_extra["reasoning_content"] == "Let me think."


def test_schema_miss_is_corrected_once(client, fake):
    fake.script('{"name": "Paris"}', '{"name": "Paris", "population": 2, "rivers": []}')
    message = client.chat.completions.parse(model=MODEL, messages=ASK, response_format=City).choices[0].message
    assert message.parsed == City(name="Paris", population=2, rivers=[])
    first, second = prompts(fake)
    assert second.startswith("Your reply was not JSON that matches the schema: $.population is required")


@pytest.mark.parametrize("stream", [False, True])
def test_no_compliance_after_the_retry_is_an_openai_error(client, fake, stream):
    fake.script("I cannot do JSON.", "Really, I cannot.")
    fmt = {"type": "json_schema", "json_schema": {"name": "City", "strict": True, "schema": City.model_json_schema()}}
    with pytest.raises(openai.InternalServerError) as info:
        result = client.chat.completions.create(model=MODEL, messages=ASK, response_format=fmt, stream=stream)
        list(result) if stream else None
    assert info.value.code == "model_output_invalid"
    assert "did not comply with response_format" in info.value.message
    assert "the reply holds no JSON value" in info.value.message


def test_json_object_mode(client, fake):
    fake.script('Sure! {"ok": true}')
    message = client.chat.completions.create(
        model=MODEL, messages=ASK, response_format={"type": "json_object"}).choices[0].message
    assert json.loads(message.content) == {"ok": True}
    assert "Reply with only one valid JSON object" in prompts(fake)[0]


def test_json_mode_streams_the_json_once_valid(client, fake):
    fake.configure(chunk_chars=2)
    fake.script('{"a": [1, 2, 3]}')
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=ASK, response_format={"type": "json_object"}, stream=True))
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == ['{"a": [1, 2, 3]}'] and chunks[-1].choices[0].finish_reason == "stop"


def test_langchain_with_structured_output(proxy, fake):
    from langchain_openai import ChatOpenAI

    fake.script('{"name": "Oslo", "population": 700000, "rivers": ["Akerselva"]}')
    llm = ChatOpenAI(model=MODEL, base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0, timeout=20)
    assert llm.with_structured_output(City).invoke("Describe Oslo.") == City(
        name="Oslo", population=700000, rivers=["Akerselva"])
    assert fake.requests_to("/api/v2/chat/completions")[-1].json["messages"][0]["content"].startswith("Describe Oslo.")
