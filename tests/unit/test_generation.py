"""Table-driven tests of the pure mapping for generated media in ``transform.generation``."""

from __future__ import annotations

import pytest

from transform import generation as m
from transform import openai_chat as t
from errors import InvalidRequest, ModelNotFound, NotFound, RateLimited
from qwen_client.wire import error_for_code

ALL = frozenset({"t2i", "image_edit", "t2v"})
MODELS = [t.ModelInfo("qwen3.8-max", thinking=True), t.ModelInfo("qwen3.7-plus", generates=ALL),
          t.ModelInfo("qwen-painter", generates=frozenset({"t2i"}))]
URL = "https://cdn.qwenlm.ai/output/u/t2i/c/a.png?key=eyJx"


@pytest.mark.parametrize(("model", "kind"), [
    ("qwen3.7-plus-image", "t2i"), ("QWEN3.7-PLUS-IMAGE", "t2i"), ("qwen3.7-plus-image_edit", "image_edit"),
    ("qwen3.7-plus-image-edit", "image_edit"), ("qwen3.7-plus-video", "t2v"), ("qwen3.7-plus", None),
    ("qwen3.7-plus-thinking", None), ("-image", None), ("qwen-imagery", None),
])
def test_media_kind(model, kind):
    assert m.generation_kind(model) == kind


@pytest.mark.parametrize(("requested", "kind", "upstream"), [
    ("qwen3.7-plus-image", "t2i", "qwen3.7-plus"), ("qwen-painter", "t2i", "qwen-painter"),
    ("dall-e-3", "t2i", "qwen3.7-plus"), (None, "t2v", "qwen3.7-plus"), ("sora-2", "t2v", "qwen3.7-plus"),
    ("qwen3.7-plus-image-edit", "image_edit", "qwen3.7-plus"),
])
def test_resolve_media_model(requested, kind, upstream):
    assert m.resolve_generation_model(requested, MODELS, kind) == m.GenerationChoice(kind, MODELS[[x.id for x in MODELS].index(upstream)])


@pytest.mark.parametrize(("requested", "kind", "strict", "words"), [
    ("qwen3.8-max-image", "t2i", False, "does not offer"),
    ("qwen-painter-video", "t2v", False, "does not offer"),
    ("nonsense-image", "t2i", True, "does not exist"),
])
def test_media_model_refusals(requested, kind, strict, words):
    with pytest.raises(ModelNotFound) as info:
        m.resolve_generation_model(requested, MODELS, kind, strict)
    assert words in info.value.message


def test_no_model_offers_it():
    with pytest.raises(ModelNotFound):
        m.resolve_generation_model(None, MODELS[:1], "t2v")


def test_variants_and_model_flags_from_the_site():
    model = t.parse_upstream_models({"data": [{"id": "x", "info": {"meta": {"chat_type": ["t2t", "t2i", 7]}}}]})[0]
    assert model.generates == {"t2i"} and t.model_variants(model) == ["x", "x-image"]


@pytest.mark.parametrize(("size", "kind", "ratio"), [
    (None, "t2i", None), ("", "t2i", None), ("auto", "t2i", "auto"), ("auto", "t2v", None),
    ("1024x1024", "t2i", "1:1"), ("256x256", "t2i", "1:1"), ("1536x1024", "t2i", "4:3"), ("1024x1536", "t2i", "3:4"),
    ("1792x1024", "t2i", "16:9"), ("1024x1792", "t2i", "9:16"), ("1280x720", "t2v", "16:9"),
    ("720x1280", "t2v", "9:16"), ("2688x1536", "t2i", "16:9"), ("1024X768", "t2i", "4:3"), ("16:9", "t2v", "16:9"),
    ("3:4", "t2i", "3:4"),
])
def test_size_to_ratio(size, kind, ratio):
    assert m.size_to_ratio(size, kind) == ratio


@pytest.mark.parametrize("size", ["1152x768", "1000x300", "3:2", "big", "0x0", "1024x0", "2:1"])
def test_unknown_sizes_are_refused_clearly(size):
    with pytest.raises(InvalidRequest) as info:
        m.size_to_ratio(size, "t2i")
    assert info.value.param == "size" and "1792x1024 (16:9)" in info.value.message


@pytest.mark.parametrize(("fields", "expected"), [
    ({"prompt": " a fox "}, m.ImageRequest("a fox")),
    ({"prompt": "a fox", "n": "2", "size": "1024x1792", "response_format": "b64_json", "model": "dall-e-3"},
     m.ImageRequest("a fox", "dall-e-3", 2, "9:16", "b64_json")),
    ({"prompt": "a fox", "n": 4, "quality": "hd", "style": "vivid", "user": "u"}, m.ImageRequest("a fox", n=4)),
])
def test_parse_image_request(fields, expected):
    assert m.parse_image_request(fields) == expected


def test_edits_take_no_size():
    assert m.parse_image_request({"prompt": "p", "size": "1000x300"}, "image_edit").ratio is None


@pytest.mark.parametrize(("fields", "param"), [
    ({}, "prompt"), ({"prompt": 3}, "prompt"), ({"prompt": "p", "n": 0}, "n"), ({"prompt": "p", "n": "two"}, "n"),
    ({"prompt": "p", "n": True}, "n"), ({"prompt": "p", "response_format": "png"}, "response_format"),
    ({"prompt": "p", "model": 1}, "model"),
])
def test_bad_image_requests(fields, param):
    with pytest.raises(InvalidRequest) as info:
        m.parse_image_request(fields)
    assert info.value.param == param


@pytest.mark.parametrize(("fields", "expected"), [
    ({"prompt": "waves"}, m.VideoRequest("waves")),
    ({"prompt": "waves", "size": "720x1280", "seconds": "8"}, m.VideoRequest("waves", ratio="9:16")),
    ({"prompt": "waves", "aspect_ratio": "1:1", "image": URL}, m.VideoRequest("waves", ratio="1:1", reference=URL)),
])
def test_parse_video_request(fields, expected):
    assert m.parse_video_request(fields) == expected


@pytest.mark.parametrize(("value", "url"), [
    (URL, URL), ({"image_url": URL}, URL), ({"image_url": {"url": URL}}, URL), ('{"image_url": "%s"}' % URL, URL),
    ({"file_id": "f"}, None), ("{broken", None), (b"bytes", None),
])
def test_reference_url(value, url):
    assert m.reference_url(value) == url


def test_prompt_and_history_images_from_chat():
    messages = (("system", "be nice"), ("user", "a fox"), ("assistant", f"Here:\n\n![image]({URL})"),
                ("user", "make it blue"), ("assistant", "![image](https://x/y.png) ![a](http://z/w.jpg)"))
    assert m.last_user_text(messages) == "make it blue"
    assert m.history_images(messages) == [URL, "https://x/y.png", "http://z/w.jpg"]
    with pytest.raises(InvalidRequest):
        m.last_user_text((("user", "  "),))


@pytest.mark.parametrize(("kind", "ratio", "stream", "size"), [
    ("t2i", "16:9", True, "16:9"), ("t2i", None, True, None), ("image_edit", "1:1", True, None),
    ("t2v", "9:16", False, "9:16"), ("i2v", None, False, None),
])
def test_media_payload(kind, ratio, stream, size):
    payload = m.generation_payload(kind=kind, model="qwen3.7-plus", chat_id="c", prompt="p", ratio=ratio,
                              files=[m.image_file(URL)] if kind in ("image_edit", "i2v") else [], fid="f", timestamp=1)
    message = payload["messages"][0]
    assert payload["stream"] is stream and payload.get("size") == size and message["extra"]["meta"].get("size") == size
    assert message["chat_type"] == message["sub_chat_type"] == message["extra"]["meta"]["subChatType"] == kind
    assert message["feature_config"]["thinking_enabled"] is False and message["feature_config"]["output_schema"] == "phase"
    assert [f["url"] for f in message["files"]] == ([URL] if kind in ("image_edit", "i2v") else [])


@pytest.mark.parametrize(("delta", "urls"), [
    ({"phase": "image_gen", "content": URL}, [URL]),
    ({"phase": "image_edit", "content": f" {URL} "}, [URL]),
    ({"phase": "answer", "content": URL}, []),
    ({"phase": "image_gen", "content": "drawing…"}, []),
    ({"phase": "image_gen_tool", "content": "", "extra": {"image_list": [{"image": URL}, {"x": 1}, "y"]}}, [URL]),
    ({"phase": "answer", "extra": {"image_list": [{"image": URL}]}}, [URL]),
    ({"phase": "image_gen", "content": None, "extra": None}, []),
])
def test_delta_image_urls(delta, urls):
    assert m.delta_image_urls(delta) == urls


def test_readback_image_urls_from_either_history_form():
    answer = {"role": "assistant", "content": "", "content_list": [{"phase": "image_gen", "content": URL}],
              "extra": None}
    as_list = {"data": {"chat": {"messages": [{"role": "user", "content": "a fox"}, answer]}}}
    as_map = {"data": {"chat": {"history": {"messages": {"a": answer}}}}}
    assert m.readback_image_urls(as_list) == m.readback_image_urls(as_map) == [URL]
    assert m.readback_image_urls({"data": {"chat": {"messages": []}}}) == []
    assert m.readback_image_urls({"success": False}) == []


@pytest.mark.parametrize(("answer", "task_id"), [
    ({"data": {"messages": [{"extra": {"wanx": {"task_id": "e6b0a76d-1111"}}}]}}, "e6b0a76d-1111"),
    ({"data": {"task": {"taskId": "abc"}}}, "abc"),
    ([{"response.created": {}}, {"choices": [{"delta": {"extra": {"task_id": "t-1"}}}]}], "t-1"),
    ({"data": {"messages": [{"extra": {"wanx": {"task_id": "../../etc"}}}]}}, None),
    ({"data": {"messages": [{"extra": {}}]}}, None),
    ({"data": {"task_id": ""}}, None),
])
def test_find_task_id(answer, task_id):
    assert m.find_task_id(answer) == task_id


@pytest.mark.parametrize(("answer", "state"), [
    ({"success": True, "data": {"task_status": "running", "content": ""}}, m.TaskState("running")),
    ({"success": True, "data": {"task_status": "success", "content": "https://cdn/v.mp4"}},
     m.TaskState("success", "https://cdn/v.mp4")),
    ({"task_status": "success", "content": "https://cdn/v.mp4"}, m.TaskState("success", "https://cdn/v.mp4")),
    ({"task_status": "Running"}, m.TaskState("running")),
    ({"task_status": "failed", "message": "bad"}, m.TaskState("failed", None, "bad")),
    ({"task_status": "pending"}, m.TaskState("failed", None, "the task ended with status 'pending'")),
    ({"task_status": "success", "content": ""}, m.TaskState("failed", None, "the site reported success without a video URL")),
    ([], m.TaskState("failed", None, "the site answered the status query with no task")),
])
def test_task_state(answer, state):
    assert m.task_state(answer) == state


@pytest.mark.parametrize(("head", "media_type"), [
    (b"\x89PNG\r\n\x1a\n....", "image/png"), (b"\xff\xd8\xff\xe0", "image/jpeg"), (b"GIF89a", "image/gif"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8", "image/webp"), (b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
    (b"<html><head><title>404", None), (b"", None),
])
def test_sniff_media_type(head, media_type):
    assert m.sniff_output_type(head) == media_type


@pytest.mark.parametrize(("url", "ok"), [
    (URL, True), ("http://CDN.qwenlm.ai/x", True), ("https://cdn.qwenlm.ai.evil.com/x", False),
    ("https://user:pw@cdn.qwenlm.ai/x", False), ("ftp://cdn.qwenlm.ai/x", False), ("https://169.254.169.254/", False),
    ("https://[::1/x", False), ("//cdn.qwenlm.ai/x", False),
])
def test_allowed_media_url(url, ok):
    assert m.allowed_download_url(url, ["cdn.qwenlm.ai", "chat.qwen.ai"]) is ok


def test_video_ids_round_trip_and_refuse_anything_else():
    job = m.VideoJob("e6b0a76d-1111", "ab12", 1767225600, "t2v", "16:9", "qwen3.7-plus-video")
    assert m.decode_video_id(m.encode_video_id(job)) == job
    for bad in ("video_", "video_!!!", "vid_abc", "video_WzIsImEiXQ", m.encode_video_id(job)[:-4]):
        with pytest.raises(NotFound):
            m.decode_video_id(bad)


@pytest.mark.parametrize(("state", "now", "status", "progress"), [
    (None, 1000, "in_progress", 0), (m.TaskState("running"), 1090, "in_progress", 50),
    (m.TaskState("running"), 5000, "in_progress", 95), (m.TaskState("success", "https://v"), 1100, "completed", 100),
    (m.TaskState("failed", message="bad"), 1100, "failed", 0),
])
def test_video_object(state, now, status, progress):
    job = m.VideoJob("t", "a", 1000, "t2v", "16:9", "sora-2")
    video = m.video_object(job, state, now)
    assert (video["status"], video["progress"], video["object"]) == (status, progress, "video")
    assert video.get("url") == (state.url if state else None)
    assert (video["error"] is not None) is (status == "failed")


def test_image_translator_deduplicates_and_keeps_order():
    tr = m.ImageTranslator("id", "qwen3.7-plus-image", 1)
    events = [
        {"response.created": {"response_id": "r"}},
        {"choices": [{"delta": {"phase": "image_gen_think", "content": "plan", "status": "typing"}}]},
        {"choices": [{"delta": {"phase": "answer", "content": "Here it is.", "status": "typing"}}]},
        {"choices": [{"delta": {"phase": "answer", "content": "", "status": "finished"}}]},
        {"choices": [{"delta": {"phase": "image_gen", "content": URL, "extra": {"output_image_hw": [[1536, 2688]]}}}]},
        {"choices": [{"delta": {"phase": "image_gen", "content": URL}}]},
        {"choices": [{"delta": {"phase": "image_gen", "content": "", "status": "finished"}}]},
    ]
    chunks = [c for e in events for c in tr.feed(e)]
    assert not tr.finished, "an image turn ends at the end of the stream"
    chunks += tr.finish()
    contents = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert [c for c in contents if c] == ["Here it is.", f"\n\n![image]({URL})"]
    result = tr.completion()["choices"][0]["message"]
    assert result["content"] == f"Here it is.\n\n![image]({URL})" and result["reasoning_content"] == "plan"
    assert tr.image_urls == [URL] and tr.size == "2688x1536" and tr.has_answer


@pytest.mark.parametrize(("details", "num", "retry_after"), [
    ("今日生图额度已用完，登录后可继续生图。", 3, 3 * 3600),
    ("目前服务访问量较大，请稍后再试。", 1, 60),
    ("Service busy, please try again later.", 2, 60),
    ("", None, 60),
])
def test_rate_limits_decided_by_details(details, num, retry_after):
    error = error_for_code("RateLimited", details, num)
    assert isinstance(error, RateLimited) and error.retry_after == retry_after
