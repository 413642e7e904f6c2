"""Images, documents, audio and video in chat, end to end: the ``openai`` SDK → proxy → emulator's site and OSS."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator

import openai
import pytest

from identity_pool.accounts import jwt_claims
from tests.helpers import API_KEY, COOKIE, TOKEN
from tests.fake_qwen import make_jwt
from tests.helpers import MediaHost

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(255, -1, -1)) * 16
PDF = b"%PDF-1.7\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 20
WAV = b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(64)
MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(200)
STS = "/api/v2/files/getstsToken"


@pytest.fixture()
def host() -> Iterator[MediaHost]:
    with MediaHost() as server:
        yield server


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url, "detail": "high"}}


def ask(client, *parts: dict, model: str = "qwen3.7-plus", stream: bool = False, **kwargs):
    question = {"type": "text", "text": "What is this?"}
    messages = kwargs.pop("messages", None) or [{"role": "user", "content": [question, *parts]}]
    reply = client.chat.completions.create(model=model, messages=messages, stream=stream, **kwargs)
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
    return reply.choices[0].message.content


def sent_message(fake) -> dict:
    return fake.requests_to("/api/v2/chat/completions")[-1].json["messages"][0]


def stored(fake, entry: dict):
    """The object the emulator's OSS holds for a files[] entry."""
    (found,) = [o for o in fake.objects.values() if o.grant.file_id == entry["id"]]
    return found


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_data_url_image_reaches_oss_and_files(client, fake, stream):
    fake.configure(answer="A test pattern.")
    assert ask(client, image_part(data_url("image/png", PNG)), stream=stream) == "A test pattern."
    message = sent_message(fake)
    assert message["content"] == "What is this?" and message["chat_type"] == "t2t"
    (entry,) = message["files"]
    assert (entry["type"], entry["file_class"], entry["showType"]) == ("image", "vision", "image")
    assert entry["file_type"] == "image/png"
    obj = stored(fake, entry)
    assert obj.data == PNG and obj.content_type == "image/png", "the exact bytes, with their type"
    assert obj.authorization.startswith(f"OSS4-HMAC-SHA256 Credential={obj.grant.access_key_id}/")
    assert entry["url"].split("?")[0].endswith(obj.grant.file_path.split("/")[-1].replace(" ", "%20"))
    assert entry["size"] == len(PNG) and entry["name"] == "image.png"
    sts = fake.requests_to(STS)[-1].json
    assert sts == {"filename": "image.png", "filesize": str(len(PNG)), "filetype": "image"}


def test_upload_never_sends_account_credentials_to_storage(client, fake):
    ask(client, image_part(data_url("image/png", PNG)))
    (put,) = [r for r in fake.requests if r.method == "PUT"]
    assert "cookie" not in put.headers and TOKEN not in str(dict(put.headers))
    assert put.headers["x-oss-security-token"].startswith("FAKE-SECURITY-TOKEN-")


def test_url_image_is_fetched_and_uploaded(make_proxy, fake, host):
    url = host.serve("/photos/cat.jpg", JPEG, content_type="image/jpeg")
    client = make_proxy(ALLOW_PRIVATE_URLS=True).client()
    ask(client, image_part(url))
    (entry,) = sent_message(fake)["files"]
    assert stored(fake, entry).data == JPEG and entry["name"] == "cat.jpg" and entry["file_type"] == "image/jpeg"


def test_private_url_is_refused_by_default(client, fake, host):
    url = host.serve("/cat.png", PNG)
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, image_part(url))
    assert info.value.code == "url_not_allowed" and "127.0.0.1" in info.value.message
    assert info.value.body["param"] == "messages[0].content[1]"
    assert host.seen == [] and fake.requests_to(STS) == [] and fake.requests_to("/api/v2/chats/new") == []


def test_non_image_at_an_image_url_is_refused(make_proxy, fake, host):
    url = host.serve("/login", b"<html>sign in</html>", content_type="text/html")
    with pytest.raises(openai.BadRequestError) as info:
        ask(make_proxy(ALLOW_PRIVATE_URLS=True).client(), image_part(url))
    assert info.value.code == "unsupported_media_type" and fake.requests_to(STS) == []


def test_identical_images_are_uploaded_once(client, fake):
    ask(client, image_part(data_url("image/png", PNG)))
    ask(client, image_part(data_url("image/png", PNG)))
    ask(client, image_part(data_url("image/jpeg", JPEG)))
    first, second, third = (r.json["messages"][0]["files"][0] for r in fake.requests_to("/api/v2/chat/completions"))
    assert first["id"] == second["id"] != third["id"]
    assert len(fake.requests_to(STS)) == 2


def test_uploads_use_the_turns_account(make_proxy, fake):
    other = f"token={make_jwt('fake-user-0002')}; ssxmod_itna=other"
    client = make_proxy(COOKIE=f"{COOKIE}|||{other}").client()
    for data in (PNG, JPEG):
        ask(client, image_part(data_url("image/png" if data is PNG else "image/jpeg", data)))
    turns = fake.requests_to("/api/v2/chat/completions")
    owners = {stored(fake, r.json["messages"][0]["files"][0]).grant.user: jwt_claims(r.cookies["token"])["id"]
              for r in turns}
    assert owners == {"fake-user-0001": "fake-user-0001", "fake-user-0002": "fake-user-0002"}


def test_client_mode_uploads_with_the_callers_token(make_proxy, fake):
    caller = make_jwt("caller-0009")
    client = make_proxy(SERVER_MODE=False).client(api_key=f"{API_KEY};{caller}")
    ask(client, image_part(data_url("image/png", PNG)))
    assert fake.requests_to(STS)[-1].cookies["token"] == caller
    assert [o.grant.user for o in fake.objects.values()] == ["caller-0009"]


def test_several_files_go_up_together_and_keep_their_order(client, fake):
    images = [PNG + bytes([n]) for n in range(4)]
    pdf = {"type": "file", "file": {"file_data": data_url("application/pdf", PDF), "filename": "a.pdf"}}
    fake.configure(parse_polls=0)
    ask(client, *(image_part(data_url("image/png", i)) for i in images), pdf)
    files = sent_message(fake)["files"]
    assert [stored(fake, e).data for e in files] == [*images, PDF]
    assert [e["type"] for e in files] == ["image"] * 4 + ["file"]


def test_sts_v1_fallback(client, fake):
    fake.configure(sts_v2_available=False)
    ask(client, image_part(data_url("image/png", PNG)))
    assert len(fake.requests_to("/api/v1/files/getstsToken")) == 1 and sent_message(fake)["files"]


# ------------------------------------------------------------------ documents, audio, video


def test_pdf_is_uploaded_and_parsed(client, fake):
    fake.configure(parse_polls=1)
    pdf = {"type": "file", "file": {"file_data": data_url("application/pdf", PDF), "filename": "Q3 报告.pdf"}}
    ask(client, pdf)
    (entry,) = sent_message(fake)["files"]
    assert (entry["type"], entry["file_class"], entry["name"]) == ("file", "document", "Q3 报告.pdf")
    assert stored(fake, entry).data == PDF and stored(fake, entry).parse_status == "success"
    assert fake.requests_to(STS)[-1].json["filetype"] == "file"
    assert [r.json for r in fake.requests_to("/api/v2/files/parse")] == [{"file_id": entry["id"]}]
    assert len(fake.requests_to("/api/v2/files/parse/status")) == 2, "pending once, then success"


def test_audio_is_uploaded_without_parsing(client, fake):
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "wav"}}
    ask(client, audio)
    (entry,) = sent_message(fake)["files"]
    assert (entry["type"], entry["file_class"], entry["file_type"]) == ("audio", "audio", "audio/wav")
    assert stored(fake, entry).data == WAV
    assert fake.requests_to("/api/v2/files/parse") == [], "only documents are parsed (§7.3)"


def test_video_url_is_fetched_and_uploaded(make_proxy, fake, host):
    url = host.serve("/clip.mp4", MP4, content_type="video/mp4")
    ask(make_proxy(ALLOW_PRIVATE_URLS=True).client(), {"type": "video_url", "video_url": {"url": url}})
    (entry,) = sent_message(fake)["files"]
    assert (entry["type"], entry["file_class"]) == ("video", "video") and stored(fake, entry).data == MP4


@pytest.mark.parametrize(("switches", "error", "code", "words"), [
    ({"parse_polls": 0, "parse_result": "failed"}, openai.BadRequestError, "document_parse_failed",
     "could not read the document 'a.pdf'"),
    ({"parse_outage": True}, openai.InternalServerError, "upstream_parse_failed", "parser failed"),
])
def test_parse_failures(client, fake, switches, error, code, words):
    fake.configure(**switches)
    with pytest.raises(error) as info:
        ask(client, {"type": "file", "file": {"file_data": data_url("application/pdf", PDF), "filename": "a.pdf"}})
    assert info.value.code == code and words in info.value.message
    assert fake.requests_to("/api/v2/chat/completions") == [], "no turn is sent without its document"


# ------------------------------------------------------------------ models without vision


def test_non_vision_model_falls_back(make_proxy, fake):
    client = make_proxy(VISION_FALLBACK_MODEL="qwen3.7-plus").client()
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3.8-max-thinking", messages=[{"role": "user", "content": [image_part(data_url("image/png", PNG))]}])
    assert raw.headers["X-Model-Fallback"] == "qwen3.7-plus"
    assert raw.parse().model == "qwen3.8-max-thinking"
    body = fake.requests_to("/api/v2/chat/completions")[-1].json
    assert body["model"] == "qwen3.7-plus" and body["messages"][0]["feature_config"]["thinking_mode"] == "Thinking"


def test_fallback_is_said_on_streams_too(make_proxy, fake):
    client = make_proxy(VISION_FALLBACK_MODEL="qwen3.5-omni-plus").client()
    with client.chat.completions.with_streaming_response.create(
        model="qwen3-coder-plus", stream=True,
        messages=[{"role": "user", "content": [image_part(data_url("image/png", PNG))]}]) as resp:
        assert resp.headers["X-Model-Fallback"] == "qwen3.5-omni-plus"
        assert "data: [DONE]" in resp.read().decode()


def test_non_vision_model_without_fallback_names_vision_models(client, fake):
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, image_part(data_url("image/png", PNG)), model="qwen3.8-max")
    assert info.value.code == "model_without_vision"
    assert "qwen3.7-plus" in info.value.message and "qwen3.5-omni-plus" in info.value.message
    assert fake.requests_to(STS) == []


def test_text_on_a_non_vision_model_needs_no_fallback(make_proxy, fake):
    client = make_proxy(VISION_FALLBACK_MODEL="qwen3.7-plus").client()
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3.8-max", messages=[{"role": "user", "content": "hi"}])
    assert "X-Model-Fallback" not in raw.headers
    assert fake.requests_to("/api/v2/chat/completions")[-1].json["model"] == "qwen3.8-max"


# ------------------------------------------------------------------ history, limits, failures


def test_earlier_turns_media_become_placeholders(client, fake):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part(data_url("image/png", PNG))]},
        {"role": "assistant", "content": "A test pattern."},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, image_part(data_url("image/jpeg", JPEG))]},
    ]
    ask(client, messages=messages)
    message = sent_message(fake)
    assert "<user>\nWhat is this?\n[earlier image]\n</user>" in message["content"]
    assert message["content"].endswith("<user>\nAnd this?\n</user>")
    (entry,) = message["files"]
    assert stored(fake, entry).data == JPEG and len(fake.requests_to(STS)) == 1


@pytest.mark.parametrize(("parts", "code"), [
    ([image_part(data_url("image/png", PNG))] * 6, "too_many_media"),
    ([image_part(data_url("image/png", PNG)),
      {"type": "input_audio", "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "wav"}}], "mixed_media"),
    ([image_part(data_url("image/png", PNG + bytes(10 * 1024 * 1024)))], "media_too_large"),
])
def test_limits_are_400s(make_proxy, fake, parts, code):
    client = make_proxy(MAX_REQUEST_MB=40).client()
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, *parts)
    assert info.value.code == code and fake.requests_to(STS) == []


@pytest.mark.parametrize(("switches", "error", "code"), [
    ({"sts_limit": 0}, openai.RateLimitError, "upstream_rate_limited"),
    ({"fault": "rate_limited", "fault_endpoint": "uploads"}, openai.RateLimitError, "upstream_rate_limited"),
    ({"fault": "waf_html", "fault_endpoint": "uploads"}, openai.RateLimitError, "upstream_challenge"),
    ({"fault": "unauthorized", "fault_endpoint": "uploads"}, openai.InternalServerError, "upstream_unauthorized"),
    ({"sts_omit": ("security_token",)}, openai.InternalServerError, "upstream_bad_upload_grant"),
    ({"oss_fault": "access_denied"}, openai.InternalServerError, "upstream_upload_refused"),
    ({"oss_fault": "internal_error"}, openai.InternalServerError, "service_unavailable"),
    ({"oss_fault": "request_time_skewed"}, openai.InternalServerError, "upstream_upload_refused"),
])
def test_upload_failures_stop_the_turn_with_openai_errors(client, fake, switches, error, code):
    fake.configure(**switches)
    with pytest.raises(error) as info:
        ask(client, image_part(data_url("image/png", PNG)))
    assert info.value.code == code and "<" not in info.value.message
    if error is openai.RateLimitError:
        assert int(info.value.response.headers["Retry-After"]) >= 60
    assert fake.requests_to("/api/v2/chat/completions") == [], "never a turn without its image"


def test_waf_on_document_parsing(client, fake):
    fake.configure(fault="waf_html", fault_endpoint="parse")
    with pytest.raises(openai.RateLimitError) as info:
        ask(client, {"type": "file", "file": {"file_data": data_url("application/pdf", PDF), "filename": "a.pdf"}})
    assert info.value.code == "upstream_challenge"


@pytest.mark.parametrize(("fault", "error", "code"), [
    ("stream_data_inspection", openai.BadRequestError, "content_policy_violation"),
    ("stream_quota_limit", openai.RateLimitError, "upstream_rate_limited"),
    ("rate_limited", openai.RateLimitError, "upstream_rate_limited"),
])
def test_moderation_and_quota_on_a_turn_with_an_image(client, fake, fault, error, code):
    fake.configure(fault=fault)
    with pytest.raises(error) as info:
        ask(client, image_part(data_url("image/png", PNG)), stream=True)
    assert info.value.code == code and len(fake.objects) == 1


def test_grant_secrets_never_reach_the_log(client, fake, caplog):
    caplog.set_level(logging.DEBUG)
    ask(client, image_part(data_url("image/png", PNG)))
    (obj,) = fake.objects.values()
    assert obj.grant.access_key_secret not in caplog.text and obj.grant.security_token not in caplog.text
