"""Hostile or broken input over real sockets: it is refused before the site sees it, briefly, and never freezes.

The emulator records every request it receives, so "nothing was sent" is checked
on what the site would have seen, not on what the proxy meant to do.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
from collections.abc import Iterator

import openai
import pytest
import requests

from tests.helpers import API_KEY, MediaHost

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
#: What the site sees before any work: the model list (and sign-in), which make nothing upstream.
READS = ("/api/models", "/api/v2/models", "/api/v1/auths")


@pytest.fixture
def host() -> Iterator[MediaHost]:
    with MediaHost() as server:
        yield server


def work_sent(fake) -> list[str]:
    """Paths of requests that make something upstream: chats, turns, uploads, tasks."""
    return [r.path for r in fake.requests if not r.path.startswith(READS)]


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# --------------------------------------------------------------------------- no freeze


def test_a_run_of_spaces_answers_while_health_stays_up(proxy, fake):
    fake.configure(stall_after_events=2)  # the turn stays open upstream until released
    text = "a" + " " * 200_000 + "b"
    body = json.dumps({"model": "qwen3.7-plus", "stream": True, "messages": [{"role": "user", "content": text}]})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, proxy.url + "/v1/chat/completions", data=body, headers=AUTH,
                              timeout=30, stream=True)
        assert fake.wait_stalled(timeout=20), "the request reached the site within seconds"
        assert requests.get(proxy.url + "/health", timeout=5).status_code == 200
        fake.release_stalls()
        resp = pending.result(timeout=30)
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        resp.close()
    assert len(fake.requests_to("/api/v2/chat/completions")) == 1


# --------------------------------------------------------------------------- nothing reaches the site


@pytest.mark.parametrize("fields", [
    {"size": []}, {"size": 0}, {"size": {"w": 1}}, {"size": "huge"}, {"aspect_ratio": "7:3"},
    {"input_reference": ""}, {"input_reference": 5}, {"input_reference": []}, {"input_reference": {}},
    {"input_reference": {"image_url": {"url": "ftp://x/y.png"}}},
    {"input_reference": data_url("image/png", b"this is text, not a picture")},
    {"input_reference": "http://[::1/frame.png"},
])
def test_bad_video_fields_make_no_task(proxy, fake, fields):
    body = {"model": "qwen3.7-plus-video", "prompt": "a cat", **fields}
    resp = requests.post(proxy.url + "/v1/videos", data=json.dumps(body), headers=AUTH, timeout=10)
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["error"]["param"] in {*fields, "size"}
    assert work_sent(fake) == []


def test_an_image_data_url_that_is_not_an_image_is_not_uploaded(client, fake):
    fake_png = data_url("image/png", b"<html>not a picture</html>")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="qwen3.7-plus", messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": fake_png}}]}])
    assert info.value.code == "unsupported_media_type" and "not a picture" in info.value.message
    assert work_sent(fake) == []


def test_an_image_edit_of_bytes_that_are_not_an_image_uploads_nothing(proxy, fake):
    resp = requests.post(proxy.url + "/v1/images/edits", headers={"Authorization": AUTH["Authorization"]},
                         data={"prompt": "make it blue", "model": "qwen3.7-plus"},
                         files={"image": ("cat.png", b"GIF? no: plain text", "image/png")}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "unsupported_media_type"
    assert work_sent(fake) == []


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/images/generations", {"model": "qwen3.7-plus", "prompt": "a cat " * 1000}),
    ("/v1/videos", {"model": "qwen3.7-plus-video", "prompt": "a cat " * 1000}),
])
def test_a_generation_prompt_the_site_would_refuse_makes_no_chat(make_proxy, fake, path, body):
    proxy = make_proxy(MAX_TURN_CHARS=3000)
    resp = requests.post(proxy.url + path, data=json.dumps(body), headers=AUTH, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"
    assert work_sent(fake) == []


# --------------------------------------------------------------------------- bounded answers


@pytest.mark.parametrize("body", [
    {"model": "m" * 2_000_000, "messages": [{"role": "user", "content": "hi"}]},
    {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": [{"type": "x" * 2_000_000}]}]},
    {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "s" * 2_000_000 + "://x"}}]}]},
    {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "f" * 2_000_000}}]}]},
])
def test_errors_quote_input_briefly(proxy, fake, body):
    resp = requests.post(proxy.url + "/v1/chat/completions", data=json.dumps(body), headers=AUTH, timeout=20)
    assert 400 <= resp.status_code < 500 and len(resp.content) < 2000, resp.content[:300]
    assert "…" in resp.json()["error"]["message"]


def test_a_long_model_id_in_the_path_is_quoted_briefly(proxy, fake):
    resp = requests.get(proxy.url + "/v1/models/" + "m" * 6000, headers=AUTH, timeout=10)
    assert resp.status_code == 404 and len(resp.content) < 2000


def test_a_chunked_body_over_the_limit_is_a_413(make_proxy, fake):
    proxy = make_proxy(MAX_REQUEST_MB=0.05)
    payload = json.dumps({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "x" * 100_000}]})

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(payload), 4096):
            yield payload[i:i + 4096].encode()

    resp = requests.post(proxy.url + "/v1/chat/completions", data=chunks(), headers=AUTH, timeout=10)
    assert resp.status_code == 413 and "MAX_REQUEST_MB" in resp.json()["error"]["message"]
    assert work_sent(fake) == []


def test_bodies_strict_json_only(proxy, fake):
    for raw, said in ((b'{"model": "qwen3.7-plus", "max_tokens": NaN, "messages": []}', "not valid JSON"),
                      (b'{"model": "\\ud800", "messages": []}', "surrogate"),
                      (b"[" * 200 + b"]" * 200, "deeper than")):
        resp = requests.post(proxy.url + "/v1/chat/completions", data=raw, headers=AUTH, timeout=10)
        assert resp.status_code == 400 and said in resp.json()["error"]["message"], resp.text[:300]
    resp = requests.post(proxy.url + "/refresh-token", data=b'{"account": Infinity}', headers=AUTH, timeout=10)
    assert resp.status_code == 400
    resp = requests.post(proxy.url + "/v1/chat/completions", data=b'{"model": "qwen3.7-plus", "stream": "yes", '
                         b'"messages": [{"role": "user", "content": "hi"}]}', headers=AUTH, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["message"] == "'stream' must be a boolean, not a string."


def test_a_body_with_a_utf8_byte_order_mark_is_read(proxy, fake):
    chat = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
    body = b"\xef\xbb\xbf" + json.dumps(chat).encode()
    resp = requests.post(proxy.url + "/v1/chat/completions", data=body, headers=AUTH, timeout=10)
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------- schemes


@pytest.mark.parametrize("scheme", ["HTTP", "Http"])
def test_upper_case_http_urls_are_fetched(make_proxy, fake, host, scheme):
    url = host.serve("/cat.png", PNG, content_type="image/png").replace("http", scheme, 1)
    client = make_proxy(ALLOW_PRIVATE_URLS=True).client()
    client.chat.completions.create(model="qwen3.7-plus", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}])
    assert [path for path, _ in host.seen] == ["/cat.png"]
    files = fake.requests_to("/api/v2/chat/completions")[-1].json["messages"][0]["files"]
    assert len(files) == 1 and files[0]["file_type"] == "image/png"
