"""Generated bodies at every endpoint, over a real socket: a 4xx OpenAI error (or a 2xx), never a 5xx.

Hypothesis writes the bodies: JSON of any shape, raw bytes, and near-valid
requests with one field swapped for a hostile value (a wrong type, a lone
surrogate, a huge or non-finite number, deep nesting). The run is bounded and
derandomized, so CI sees the same few hundred requests every time; for a deeper
local run, ``FUZZ_EXAMPLES=2000 FUZZ_SEED=random`` (per test) widens and varies it.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fake_qwen import FakeQwenServer
from tests.helpers import API_KEY, MODEL, ProxyServer

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "30")), deadline=None,
                derandomize=os.environ.get("FUZZ_SEED") != "random", database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
       "AAAABJRU5ErkJggg==")  # one pixel


@pytest.fixture(scope="module")
def proxy_url(fake_server: FakeQwenServer) -> Iterator[str]:
    with ProxyServer(fake_server.base_url, VIDEO_SYNC_WAIT=0) as server:
        yield server.url


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(autouse=True)
def json_answers(fake) -> None:
    """The model answers with a JSON object, so valid ``response_format`` requests are valid all the way."""
    fake.configure(answer='{"answer": "ok"}')


def assert_answer(resp: requests.Response) -> None:
    """Below 500, and every refusal an OpenAI error object."""
    assert resp.status_code < 500, f"{resp.status_code}: {resp.text[:500]}"
    if resp.status_code >= 400:
        error = resp.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
        assert len(resp.content) < 4096, "an error echoes its input unbounded"


# --------------------------------------------------------------------------- what is thrown

HOSTILE_TEXT = st.sampled_from(["\ud800", "a\udfffb", "", " ", "a" + " " * 5000 + "b", "１２", "²", "Infinity",
                                "<tool_call>" * 50, "http://[::1", "HTTP://127.0.0.1:1/x.png", "x" * 20000])
HOSTILE_NUMBER = st.sampled_from([10 ** 30, -1, 0, 2 ** 63, 1e308, -0.0, 1.5])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | HOSTILE_TEXT \
    | HOSTILE_NUMBER
ANY_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
DEEP = st.integers(min_value=50, max_value=3000).map(lambda n: "[" * n + "]" * n) \
    | st.integers(min_value=50, max_value=3000).map(lambda n: '{"a":' * n + "1" + "}" * n)


def encode(value: Any) -> bytes:
    # json.dumps writes NaN and Infinity and escapes lone surrogates: both are what fuzzers send.
    return json.dumps(value).encode()


RAW = st.one_of(ANY_JSON.map(encode), DEEP.map(str.encode), st.binary(max_size=200),
                st.sampled_from([b"NaN", b'{"n": Infinity}', b'{"a": 1e999}', b'"\\ud800"', b"{", b"[]", b"null"]))

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
IMAGE = {"prompt": "a cat", "model": f"{MODEL}-image", "n": 1, "size": "1024x1024"}
VIDEO = {"prompt": "a cat", "model": f"{MODEL}-video", "size": "1280x720"}
CHAT_PATHS = [("model",), ("messages",), ("messages", 0), ("messages", 0, "role"), ("messages", 0, "content"),
              ("stream",), ("n",), ("tools",), ("tool_choice",), ("thinking",), ("response_format",),
              ("stream_options",), ("max_tokens",), ("reasoning_effort",), ("thinking_budget",),
              ("web_search_options",)]
NESTED = {("tools",): [{"type": None}], ("thinking",): {"type": None},
          ("response_format",): {"type": "json_schema", "json_schema": None},
          ("messages", 0, "content"): [{"type": "image_url", "image_url": {"url": None}}],
          ("tool_choice",): {"type": "function", "function": {"name": None}}}


def near(base: dict, paths: list[tuple]) -> st.SearchStrategy[dict]:
    """``base`` with one field (or a field inside a usual shape of it) set to a hostile value."""
    def swap(path: tuple, value: Any, nested: bool) -> dict:
        body = json.loads(json.dumps(base))
        if nested and path in NESTED:
            template = json.loads(json.dumps(NESTED[path]))
            _set_none(template, value)
            value = template
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return body
    return st.builds(swap, st.sampled_from(paths), ANY_JSON, st.booleans())


def _set_none(template: Any, value: Any) -> None:
    items = template.items() if isinstance(template, dict) else enumerate(template)
    for key, item in list(items):
        if item is None:
            template[key] = value
        elif isinstance(item, (dict, list)):
            _set_none(item, value)


# --------------------------------------------------------------------------- the endpoints


@FUZZ
@given(body=RAW)
@example(body=b"[" * 100_000 + b"]" * 100_000)  # RecursionError once
@example(body=b'{"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "\\ud800"}]}')
@example(body=b'{"account": Infinity}')
@example(body=b'["prompt"]')
def test_any_bytes_at_every_json_endpoint(http: requests.Session, proxy_url: str, body: bytes) -> None:
    for path in ("/v1/chat/completions", "/v1/images/generations", "/v1/images/edits", "/v1/videos",
                 "/refresh-token"):
        assert_answer(http.post(proxy_url + path, data=body, headers={**AUTH, "Content-Type": "application/json"},
                                timeout=30))


@FUZZ
@given(body=near(CHAT, CHAT_PATHS))
@example(body={**CHAT, "messages": [{"role": [], "content": "hi"}]})  # the reported ones
@example(body={**CHAT, "thinking": {"type": {}}})
@example(body={**CHAT, "tools": [{"type": []}]})
@example(body={**CHAT, "model": "\ud800"})
@example(body={**CHAT, "model": "m" * 1_000_000})
@example(body={**CHAT, "messages": [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "http://[::1/x.png"}}]}]})
def test_near_valid_chat_bodies(http: requests.Session, proxy_url: str, body: dict) -> None:
    assert_answer(http.post(proxy_url + "/v1/chat/completions", data=encode(body), headers=AUTH, timeout=30))


@FUZZ
@example(body={**IMAGE, "n": "²"}, edit={"prompt": "\ud800", "image": PNG})
@given(body=near(IMAGE, [("prompt",), ("model",), ("n",), ("size",), ("response_format",)]),
       edit=near({"prompt": "a cat", "image": PNG}, [("image",), ("prompt",), ("n",)]))
def test_near_valid_image_bodies(http: requests.Session, proxy_url: str, body: dict, edit: dict) -> None:
    assert_answer(http.post(proxy_url + "/v1/images/generations", data=encode(body), headers=AUTH, timeout=30))
    assert_answer(http.post(proxy_url + "/v1/images/edits", data=encode(edit), headers=AUTH, timeout=30))


@FUZZ
@given(body=near(VIDEO, [("prompt",), ("model",), ("size",), ("input_reference",), ("aspect_ratio",)]))
@example(body={**VIDEO, "input_reference": "http://[::1"})
def test_near_valid_video_bodies(http: requests.Session, proxy_url: str, body: dict) -> None:
    assert_answer(http.post(proxy_url + "/v1/videos", data=encode(body), headers=AUTH, timeout=30))


FORM_TEXT = st.text(max_size=40) | st.sampled_from(["１", "²", "99999999999999999999999", "-1", "HTTP://[::1"])


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(["prompt", "model", "n", "size", "response_format", "image",
                                               "input_reference", "seconds"]), FORM_TEXT, max_size=5),
       file=st.binary(max_size=64), name=st.text(max_size=20))
def test_multipart_forms(http: requests.Session, proxy_url: str, fields: dict, file: bytes, name: str) -> None:
    for path, part in (("/v1/images/edits", "image"), ("/v1/videos", "input_reference")):
        resp = http.post(proxy_url + path, data=fields, files={part: (name or "x", file, "image/png")},
                         headers=AUTH, timeout=30)
        assert_answer(resp)


@FUZZ
@given(segment=st.text(min_size=1, max_size=60) | HOSTILE_TEXT.filter(bool))
def test_every_get_endpoint(http: requests.Session, proxy_url: str, segment: str) -> None:
    quoted = urllib.parse.quote(segment.encode("utf-8", "surrogatepass"), safe="")
    for path in ("/", "/health", "/v1/models", f"/v1/models/{quoted}", f"/v1/videos/{quoted}",
                 f"/v1/videos/{quoted}/content", f"/v1/{quoted}"):
        assert_answer(http.get(proxy_url + path, headers=AUTH, timeout=30))
