"""Images and videos out (§8), through the proxy with the official ``openai`` SDK against the emulator."""

from __future__ import annotations

import base64
import json
from typing import Any

import openai
import pytest
import requests

from tests.helpers import API_KEY, COOKIE
from tests.fake_qwen import make_jwt
from tests.fake_qwen.media_out import IMAGE_PLAN, IMAGE_REMARK, TINY_MP4, TINY_PNG

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks its videos API so


def sent_turns(fake) -> list[dict]:
    return [r.json for r in fake.requests_to("/api/v2/chat/completions")]


def raw_sse(proxy, body: dict) -> bytes:
    resp = requests.post(proxy.url + "/v1/chat/completions", json={"stream": True, **body}, stream=True, timeout=20,
                         headers={"Authorization": f"Bearer {API_KEY}"})
    assert resp.status_code == 200, resp.text
    chunks = resp.iter_content(chunk_size=None)  # kept alive until the body is read
    return b"".join(chunks)


def sse_data(raw: bytes) -> list[Any]:
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def chat_text(events: list[Any], field: str = "content") -> str:
    return "".join(e["choices"][0]["delta"].get(field) or "" for e in events if e != "[DONE]" and e.get("choices"))


# ------------------------------------------------------------------ images endpoint


def test_images_generate_url(client, fake, fake_server):
    result = client.images.generate(prompt="a red fox in snow", model="dall-e-3", size="1792x1024")
    assert len(result.data) == 1 and result.data[0].b64_json is None
    assert result.data[0].url.startswith(fake_server.base_url + "/output/") and "/t2i/" in result.data[0].url
    assert result.size == "2688x1536" and result.created > 0
    turn = sent_turns(fake)[-1]
    message = turn["messages"][0]
    assert (turn["stream"], turn["size"], message["extra"]["meta"]["size"]) == (True, "16:9", "16:9")
    assert message["chat_type"] == message["sub_chat_type"] == message["extra"]["meta"]["subChatType"] == "t2i"
    assert message["content"] == "a red fox in snow" and message["feature_config"]["thinking_enabled"] is False
    assert fake.requests_to("/api/v2/chats/new")[-1].json["chat_type"] == "t2i"


def test_images_generate_b64_json_downloads_from_the_cdn(client, fake):
    fake.configure(cdn_not_ready=2)  # the CDN's 404 page first, as measured right after generation
    result = client.images.generate(prompt="a fox", response_format="b64_json")
    assert base64.b64decode(result.data[0].b64_json) == TINY_PNG and result.data[0].url is None
    assert result.output_format == "png"
    assert len(fake.requests_to(fake.requests[-1].path)) == 3


def test_n_images_are_n_turns(client, fake):
    result = client.images.generate(prompt="a fox", n=2, size="1024x1024")
    assert len(result.data) == 2 and result.data[0].url != result.data[1].url
    assert [t["size"] for t in sent_turns(fake)] == ["1:1", "1:1"]


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"size": "1000x300"}, "size"), ({"size": "1152x768"}, "size"), ({"n": 5}, "n"),
    ({"response_format": "png"}, "response_format"), ({"prompt": " "}, "prompt"),
])
def test_bad_image_requests_are_400s(client, fake, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(**{"prompt": "a fox", **kwargs})
    assert info.value.body["param"] == param
    if param == "size":
        assert info.value.body["code"] == "unsupported_size" and "16:9" in info.value.body["message"]
    assert sent_turns(fake) == []


@pytest.mark.parametrize(("variant", "extra"), [
    ("readback", {"readback_after": 2}), ("image_list", {}), ("think_and_text", {}),
])
def test_every_way_the_site_names_the_image(client, fake, variant, extra):
    fake.configure(image_variant=variant, **extra)
    result = client.images.generate(prompt="a fox")
    assert requests.get(result.data[0].url, timeout=5).content == TINY_PNG


def test_b64_json_only_from_the_sites_hosts(make_proxy, fake, fake_server):
    fake.configure(cdn_base=fake_server.base_url.replace("127.0.0.1", "localhost"))
    client = make_proxy().client()
    assert client.images.generate(prompt="a fox").data[0].url.startswith("http://localhost:")
    with pytest.raises(openai.InternalServerError) as info:
        client.images.generate(prompt="a fox", response_format="b64_json")
    assert info.value.status_code == 502 and info.value.body["code"] == "media_host_refused"
    allowed = make_proxy(MEDIA_HOSTS="localhost").client()
    assert base64.b64decode(allowed.images.generate(prompt="a fox", response_format="b64_json").data[0].b64_json) \
        == TINY_PNG


def test_downloads_are_capped(make_proxy, fake):
    client = make_proxy(MEDIA_MAX_MB=0.00001).client()
    with pytest.raises(openai.InternalServerError) as info:
        client.images.generate(prompt="a fox", response_format="b64_json")
    assert info.value.body["code"] == "media_too_large" and "MEDIA_MAX_MB" in info.value.body["message"]


def test_a_cdn_that_never_serves_the_file(client, fake):
    fake.configure(cdn_not_ready=100)
    with pytest.raises(openai.InternalServerError) as info:
        client.images.generate(prompt="a fox", response_format="b64_json")
    assert info.value.body["code"] == "media_unavailable" and "'url'" in info.value.body["message"]


# ------------------------------------------------------------------ image edits


def test_images_edit_of_a_picture_the_site_made(client, proxy, fake):
    url = client.images.generate(prompt="a fox").data[0].url
    resp = requests.post(proxy.url + "/v1/images/edits", headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"image": url, "prompt": "make it blue"}, timeout=20)
    assert resp.status_code == 200 and "/image_edit/" in resp.json()["data"][0]["url"]
    message = sent_turns(fake)[-1]["messages"][0]
    assert message["chat_type"] == "image_edit" and [f["url"] for f in message["files"]] == [url]
    assert "size" not in sent_turns(fake)[-1]


def uploaded_urls(fake) -> list[str]:
    return [r.path for r in fake.requests if r.method == "PUT"]


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_images_edit_uploads_files_as_the_sdk_sends_them(client, fake, response_format):
    result = client.images.edit(image=[("in.png", TINY_PNG, "image/png"), ("two.png", TINY_PNG, "image/png")],
                                prompt="make it blue", response_format=response_format, n=2)
    assert len(result.data) == 2 and (result.data[0].url or result.data[0].b64_json)
    assert fake.media_refused_files == [] and len(sent_turns(fake)) == 2
    message = sent_turns(fake)[-1]["messages"][0]
    assert message["chat_type"] == "image_edit" and len(message["files"]) == 2
    assert all(f["file_class"] == "vision" and f["type"] == "image" for f in message["files"])
    assert len(uploaded_urls(fake)) == 2, "each picture goes up once, not once per turn"
    assert [o.data for o in fake.objects.values()] == [TINY_PNG, TINY_PNG]


def test_images_edit_json_with_a_data_url_and_a_refused_private_url(proxy, fake):
    png = "data:image/png;base64," + base64.b64encode(TINY_PNG).decode()
    resp = requests.post(proxy.url + "/v1/images/edits", headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"image": [png], "prompt": "make it blue"}, timeout=20)
    assert resp.status_code == 200 and len(uploaded_urls(fake)) == 1
    private = requests.post(proxy.url + "/v1/images/edits", headers={"Authorization": f"Bearer {API_KEY}"},
                            json={"image": "http://10.0.0.7/cat.png", "prompt": "make it blue"}, timeout=20)
    assert private.status_code == 400 and private.json()["error"]["param"] == "image"
    assert len(sent_turns(fake)) == 1


def test_images_edit_needs_an_image(proxy, fake):
    resp = requests.post(proxy.url + "/v1/images/edits", headers={"Authorization": f"Bearer {API_KEY}"},
                         data={"prompt": "make it blue"}, timeout=20)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "image"


# ------------------------------------------------------------------ images in chat


def test_image_chat_non_stream(client, fake):
    reply = client.chat.completions.create(model="qwen3.7-plus-image", messages=[{"role": "user", "content": "a fox"}])
    content = reply.choices[0].message.content
    assert content.startswith("![image](http") and content.count("![image]") == 1
    assert reply.choices[0].finish_reason == "stop"
    assert sent_turns(fake)[-1]["messages"][0]["chat_type"] == "t2i"


def test_image_chat_stream_does_not_stop_at_the_answers_finish(proxy, fake):
    fake.configure(image_variant="think_and_text")
    events = sse_data(raw_sse(proxy, {"model": "qwen3.7-plus-image", "messages": [{"role": "user", "content": "a fox"}]}))
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "stop"
    content = chat_text(events)
    assert content.startswith(IMAGE_REMARK + "\n\n![image](") and content.count("![image]") == 1
    assert chat_text(events, "reasoning_content") == "".join(IMAGE_PLAN)


def test_image_edit_chat_edits_the_last_picture_shown(client, fake):
    first = client.chat.completions.create(model="qwen3.7-plus-image", messages=[{"role": "user", "content": "a fox"}])
    shown = first.choices[0].message.content
    edited = client.chat.completions.create(model="qwen3.7-plus-image-edit", messages=[
        {"role": "user", "content": "a fox"}, {"role": "assistant", "content": shown},
        {"role": "user", "content": "make it blue"}])
    assert "/image_edit/" in edited.choices[0].message.content
    message = sent_turns(fake)[-1]["messages"][0]
    assert message["chat_type"] == "image_edit" and message["content"] == "make it blue"
    assert message["files"][0]["url"] == shown[len("![image]("):-1]


@pytest.mark.parametrize("model", ["qwen3.7-plus-image_edit", "qwen3.7-plus-image"])
def test_image_chat_with_a_picture_edits_it(client, fake, model):
    png = "data:image/png;base64," + base64.b64encode(TINY_PNG).decode()
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "make it blue"}, {"type": "image_url", "image_url": {"url": png}}]}])
    assert "/image_edit/" in reply.choices[0].message.content
    message = sent_turns(fake)[-1]["messages"][0]
    assert message["chat_type"] == "image_edit" and message["content"] == "make it blue"
    assert len(message["files"]) == 1 and fake.media_refused_files == []


def test_video_chat_with_a_picture_animates_it(client, fake):
    png = "data:image/png;base64," + base64.b64encode(TINY_PNG).decode()
    client.chat.completions.create(model="qwen3.7-plus-video", messages=[{"role": "user", "content": [
        {"type": "text", "text": "make it run"}, {"type": "image_url", "image_url": {"url": png}}]}])
    assert sent_turns(fake)[-1]["messages"][0]["chat_type"] == "i2v"


def test_generation_models_take_pictures_only(client, fake):
    wav = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt ").decode()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="qwen3.7-plus-image", messages=[{"role": "user", "content": [
            {"type": "text", "text": "draw this"}, {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}]}])
    assert info.value.body["code"] == "unsupported_content" and sent_turns(fake) == []


def test_image_edit_chat_without_a_picture_draws_one(client, fake):
    client.chat.completions.create(model="qwen3.7-plus-image_edit", messages=[{"role": "user", "content": "a fox"}])
    assert sent_turns(fake)[-1]["messages"][0]["chat_type"] == "t2i"


def test_media_variants_are_listed_where_the_site_offers_them(client, fake):
    ids = {m.id for m in client.models.list()}
    assert {"qwen3.7-plus-image", "qwen3.7-plus-image_edit", "qwen3.7-plus-video"} <= ids
    assert not {i for i in ids if i.startswith("qwen3.8-max-") and i.endswith(("-image", "-video"))}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="qwen3.8-max-image", messages=[{"role": "user", "content": "a fox"}])


# ------------------------------------------------------------------ video


def test_video_chat_stream_completes_through_polling_with_pings(proxy, fake):
    fake.configure(video_polls=3)
    raw = raw_sse(proxy, {"model": "qwen3.7-plus-video", "messages": [{"role": "user", "content": "waves"}]})
    assert raw.count(b": ping\n\n") >= 3
    events = sse_data(raw)
    assert "GET /v1/videos/video_" in chat_text(events, "reasoning_content")
    content = chat_text(events)
    assert content.startswith('<video src="http') and ".mp4?key=" in content and "[Download the video](" in content
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "stop"
    turn = sent_turns(fake)[-1]
    assert turn["stream"] is False and turn["messages"][0]["chat_type"] == "t2v"
    polls = [r for r in fake.requests if "/task/status/" in r.path]
    assert len(polls) == 4 and all(r.path.startswith("/api/v2/") for r in polls)


def test_video_chat_non_stream_waits_then_answers_with_the_video(client, fake):
    fake.configure(video_polls=2)
    reply = client.chat.completions.create(model="qwen3.7-plus-video", messages=[{"role": "user", "content": "waves"}])
    assert reply.choices[0].message.content.startswith('<video src="http')


def test_video_chat_non_stream_past_the_sync_wait_gives_the_id_to_poll(make_proxy, fake):
    client = make_proxy(VIDEO_SYNC_WAIT=0).client()
    fake.configure(video_polls=3)
    reply = client.chat.completions.create(model="qwen3.7-plus-video", messages=[{"role": "user", "content": "waves"}])
    content = reply.choices[0].message.content
    assert "still being made" in content
    video_id = content.split("GET /v1/videos/")[1].split(" ")[0]
    states = [client.videos.retrieve(video_id).status for _ in range(3)]
    assert states == ["in_progress", "in_progress", "completed"]


def test_videos_endpoint_and_polling(client, fake):
    fake.configure(video_polls=2)
    video = client.videos.create(prompt="waves at dusk", size="720x1280", seconds="4")
    assert (video.object, video.status, video.prompt, video.size) == ("video", "in_progress", "waves at dusk", "9:16")
    turn = sent_turns(fake)[-1]
    assert (turn["size"], turn["messages"][0]["extra"]["meta"]["size"]) == ("9:16", "9:16")
    seen = [client.videos.retrieve(video.id) for _ in range(3)]
    assert [v.status for v in seen] == ["in_progress", "in_progress", "completed"]
    done = seen[-1]
    assert done.progress == 100 and done.completed_at and done.model_extra["url"].endswith(".mp4?key=" +
                                                                                          done.model_extra["url"].split("key=")[1])
    assert client.videos.download_content(video.id).content == TINY_MP4


def test_videos_json_body_as_peers_send_it(proxy, fake):
    resp = requests.post(proxy.url + "/v1/videos", headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"prompt": "waves", "size": "16:9", "model": "qwen3.7-plus"}, timeout=20)
    assert resp.status_code == 200 and resp.json()["status"] == "in_progress"
    assert sent_turns(fake)[-1]["size"] == "16:9"


def test_image_to_video_from_a_picture_the_site_made(client, proxy, fake):
    url = client.images.generate(prompt="a fox").data[0].url
    resp = requests.post(proxy.url + "/v1/videos", headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"prompt": "the fox runs", "input_reference": {"image_url": url}}, timeout=20)
    assert resp.status_code == 200
    message = sent_turns(fake)[-1]["messages"][0]
    assert message["chat_type"] == "i2v" and message["files"][0]["url"] == url


def test_a_first_frame_uploaded_as_the_sdk_sends_it(client, fake):
    fake.configure(video_polls=0)
    video = client.videos.create(prompt="the fox runs", input_reference=("fox.png", TINY_PNG, "image/png"))
    message = sent_turns(fake)[-1]["messages"][0]
    assert message["chat_type"] == "i2v" and message["files"][0]["file_class"] == "vision"
    assert "size" not in sent_turns(fake)[-1], "the first frame decides the shape"
    assert client.videos.retrieve(video.id).status == "completed" and fake.media_refused_files == []


@pytest.mark.parametrize("change", [
    {"task_status_api": "v1"}, {"video_task_in": "elsewhere"}, {"video_task_in": "chat_detail"},
])
def test_video_task_variants(client, fake, change):
    fake.configure(video_polls=1, **change)
    video = client.videos.create(prompt="waves")
    assert [client.videos.retrieve(video.id).status for _ in range(2)] == ["in_progress", "completed"]


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_failed_video(client, proxy, fake, outcome):
    fake.configure(video_polls=0, video_outcome=outcome)
    video = client.videos.retrieve(client.videos.create(prompt="waves").id)
    assert video.status == "failed" and video.error.code == "video_generation_failed"
    events = sse_data(raw_sse(proxy, {"model": "qwen3.7-plus-video", "messages": [{"role": "user", "content": "w"}]}))
    assert events[-2]["error"]["code"] == "video_generation_failed" and events[-1] == "[DONE]"


def test_video_wait_gives_up_after_video_timeout_with_the_id(make_proxy, fake):
    proxy = make_proxy(VIDEO_TIMEOUT=0.05)
    fake.configure(video_polls=10_000)
    events = sse_data(raw_sse(proxy, {"model": "qwen3.7-plus-video", "messages": [{"role": "user", "content": "w"}]}))
    error = events[-2]["error"]
    assert error["code"] == "upstream_timeout" and "GET /v1/videos/video_" in error["message"]


def test_a_token_lapsing_during_a_video_wait_is_renewed(make_proxy, fake):
    refresh = fake.issue_refresh_token("user-a")
    server = make_proxy(COOKIE=f"token={make_jwt('user-a')}; refresh_token={refresh}", AUTO_REFRESH_TOKEN=False)
    client = server.client()
    fake.configure(video_polls=1)
    video = client.videos.create(prompt="waves")
    fake.invalid_tokens.add(server.app.extensions["qwen2openai"].pool.identities[0].token)
    assert [client.videos.retrieve(video.id).status for _ in range(2)] == ["in_progress", "completed"]
    assert len(fake.requests_to("/api/v2/auths/refresh")) == 1


def test_client_mode_videos_belong_to_the_callers_account(make_proxy, fake):
    server = make_proxy(SERVER_MODE=False, COOKIE="")
    mine = server.client(api_key=f"{API_KEY};{make_jwt('user-own')};")
    fake.configure(video_polls=0)
    video = mine.videos.create(prompt="waves")
    assert mine.videos.retrieve(video.id).status == "completed"
    with pytest.raises(openai.NotFoundError):
        server.client(api_key=f"{API_KEY};{make_jwt('user-other')};").videos.retrieve(video.id)
    assert len([r for r in fake.requests if "/task/status/" in r.path]) == 1, "others' ids never reach the site"


def test_unknown_video_ids_are_404(client, fake):
    for video_id in ("video_nonsense", "abc", "video_" + base64.urlsafe_b64encode(b'[1,"../x","a",1,"t2v","1:1","m"]')
                     .decode()):
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(video_id)
    assert fake.requests_to("/api/v2/task/status/../x") == []


# ------------------------------------------------------------------ quota and moderation

REFUSALS = {  # media_refusal -> (SDK exception, status, code, Retry-After)
    "quota": (openai.RateLimitError, 429, "upstream_rate_limited", str(5 * 3600)),
    "busy": (openai.RateLimitError, 429, "upstream_rate_limited", "60"),
    "quota_stream": (openai.RateLimitError, 429, "upstream_rate_limited", "60"),
    "inspection": (openai.BadRequestError, 400, "content_policy_violation", None),
    "internal": (openai.InternalServerError, 502, "upstream_bad_request", None),
}


def _generate_image(client):
    client.images.generate(prompt="a fox")


def _image_chat(client):
    client.chat.completions.create(model="qwen3.7-plus-image", messages=[{"role": "user", "content": "a fox"}],
                                   stream=True)


def _video(client):
    client.videos.create(prompt="waves")


def _video_chat(client):
    client.chat.completions.create(model="qwen3.7-plus-video", messages=[{"role": "user", "content": "waves"}])


@pytest.mark.parametrize("call", [_generate_image, _image_chat, _video, _video_chat])
@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_quota_and_moderation_answers(client, fake, call, refusal):
    cls, status, code, retry_after = REFUSALS[refusal]
    fake.configure(media_refusal=refusal, rate_limit_hours=5)
    with pytest.raises(cls) as info:
        call(client)
    assert info.value.status_code == status and info.value.body["code"] == code
    assert info.value.response.headers.get("Retry-After") == retry_after
    if retry_after is not None:  # quotas and a busy site last minutes to hours: not for the SDK's retry loop
        assert info.value.response.headers["x-should-retry"] == "false"
    assert len(sent_turns(fake)) == 1, "one account: nothing to fail over to"


@pytest.mark.parametrize("refusal", ["internal", "quota"])
def test_refusals_before_output_fail_over_to_another_account(make_proxy, fake, refusal):
    client = make_proxy(COOKIE=f"{COOKIE}|||token={make_jwt('fake-user-0002')}").client()
    fake.configure(media_refusal=refusal, media_refusal_times=1)
    assert client.images.generate(prompt="a fox").data[0].url
    video = client.videos.create(prompt="waves")
    assert client.videos.retrieve(video.id).status == "in_progress", "the video's own account is polled"
    owners = {r.cookies["token"] for r in fake.requests_to("/api/v2/chat/completions")}
    assert len(sent_turns(fake)) == 3 and len(owners) == 2


def test_a_spent_image_quota_pauses_images_only(client, proxy, fake):
    fake.configure(media_refusal="quota", media_refusal_times=1, rate_limit_hours=5)
    with pytest.raises(openai.RateLimitError):
        client.images.generate(prompt="a fox")
    answer = client.chat.completions.create(model="qwen3.7-plus", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content, "chat goes on while the image quota is spent"
    with pytest.raises(openai.RateLimitError) as info:
        client.images.generate(prompt="another fox")
    assert info.value.body["code"] == "all_accounts_quota_spent" and "images quota" in info.value.message
    assert 5 * 3600 - 30 < int(info.value.response.headers["Retry-After"]) <= 5 * 3600
    health = requests.get(proxy.url + "/health", timeout=5).json()["accounts"]
    assert health["healthy"] == 1 and health["accounts"][0]["last_error"] == "images_quota"
    assert len(sent_turns(fake)) == 2  # the refused image turn and the chat turn: nothing more was sent
