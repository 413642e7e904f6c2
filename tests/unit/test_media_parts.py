"""Media content parts (``media_parts.py``): parsing, decoding, limits, history placeholders and files[] entries."""

from __future__ import annotations

import base64

import pytest

from transform import media_parts
from transform import openai_chat as t
from errors import InvalidRequest

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
PDF = b"%PDF-1.7\n%\xe2\xe3\n"
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt "


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{b64(data)}"


def user(*parts: dict) -> dict:
    return {"role": "user", "content": list(parts)}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def image(url: str, **extra: object) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def parse(*messages: dict) -> t.ChatRequest:
    return t.parse_chat_request({"model": "qwen3.7-plus", "messages": list(messages)})


# ------------------------------------------------------------------ parts → MediaPart


@pytest.mark.parametrize(("part", "kind", "mime", "filename", "data"), [
    (image(data_url("image/png", PNG), detail="high"), "image", "image/png", "image.png", PNG),
    ({"type": "image_url", "image_url": data_url("image/jpg", JPEG)}, "image", "image/jpeg", "image.jpg", JPEG),
    (image(data_url("application/octet-stream", PNG)), "image", "image/png", "image.png", PNG),
    (image("data:;base64," + b64(JPEG)), "image", "image/jpeg", "image.jpg", JPEG),
    ({"type": "image", "image": data_url("image/png", PNG)}, "image", "image/png", "image.png", PNG),
    (image(data_url("image/png", PNG).replace("base64,", "base64,\n")), "image", "image/png", "image.png", PNG),
    ({"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}}, "audio", "audio/wav", "audio.wav", WAV),
    ({"type": "input_audio", "input_audio": {"data": b64(b"ID3x"), "format": "mp3"}}, "audio", "audio/mpeg", "audio.mp3", b"ID3x"),
    ({"type": "file", "file": {"file_data": data_url("application/pdf", PDF), "filename": "Q3 report.pdf"}},
     "document", "application/pdf", "Q3 report.pdf", PDF),
    ({"type": "file", "file": {"file_data": b64(PDF), "filename": "../../etc/report.pdf"}},
     "document", "application/pdf", "report.pdf", PDF),
    ({"type": "file", "file": {"file_data": b64(b"# Notes"), "filename": "notes.md"}},
     "document", "text/markdown", "notes.md", b"# Notes"),
    ({"type": "file", "file": {"file_data": "data:text/plain,hello%20world", "filename": "a"}},
     "document", "text/plain", "a.txt", b"hello world"),
    ({"type": "file", "file": {"file_data": data_url("image/png", PNG), "filename": "shot.png"}},
     "image", "image/png", "shot.png", PNG),
    ({"type": "video_url", "video_url": {"url": data_url("video/mp4", b"\x00\x00\x00\x18ftypmp42")}},
     "video", "video/mp4", "video.mp4", b"\x00\x00\x00\x18ftypmp42"),
])
def test_inline_parts_are_decoded(part, kind, mime, filename, data):
    chat = parse(user(text("look"), part))
    assert chat.messages == (("user", "look"),)
    (got,) = chat.media
    assert (got.kind, got.mime, got.filename, got.data) == (kind, mime, filename, data)
    assert got.param == "messages[0].content[1]"


@pytest.mark.parametrize(("part", "kind", "filename"), [
    (image("https://cdn.example/pics/cat%20one.png?size=large"), "image", "cat one.png"),
    ({"type": "image_url", "image_url": "http://cdn.example/x"}, "image", "x"),
    ({"type": "video_url", "video_url": {"url": "https://v.example/clip.mp4"}}, "video", "clip.mp4"),
    ({"type": "video_url", "video_url": "https://v.example/clip.mp4"}, "video", "clip.mp4"),
    ({"type": "input_video", "input_video": {"url": "https://v.example/a.webm"}}, "video", "a.webm"),
    ({"type": "video", "video": "https://v.example/a.mov"}, "video", "a.mov"),
])
def test_url_parts_wait_for_the_fetcher(part, kind, filename):
    (got,) = parse(user(part)).media
    assert got.remote and got.data is None and (got.kind, got.filename) == (kind, filename)


@pytest.mark.parametrize(("part", "code", "words"), [
    ({"type": "input_text", "text": "x"}, "unsupported_content", "input_text"),
    (image("ftp://example.com/a.png"), "invalid_media_url", "http(s) URL or a data URL"),
    (image(""), "invalid_request", "must be a URL"),
    ({"type": "image_url"}, "invalid_request", "must be a URL"),
    (image("data:image/png;base64,@@@@"), "invalid_request", "not valid base64"),
    (image("data:image/png;base64"), "invalid_request", "malformed data URL"),
    (image(data_url("application/pdf", PDF)), "unsupported_media_type", "expected an image but got application/pdf"),
    (image(data_url("image/svg+xml", b"<svg/>")), "unsupported_media_type", "image/svg+xml"),
    (image(data_url("image/png", b"")), "invalid_request", "empty"),
    (image(data_url("image/png", PNG + b"\x00" * media_parts.MAX_BYTES["image"])), "media_too_large", "at most 10 MB"),
    ({"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "pcm16"}}, "unsupported_media_type", "pcm16"),
    ({"type": "input_audio", "input_audio": "abc"}, "invalid_request", "base64 'data'"),
    ({"type": "file", "file": {"file_id": "file-abc"}}, "unsupported_content", "file_id"),
    ({"type": "file", "file": {"file_data": b64(b"PK\x03\x04"), "filename": "a.zip"}}, "unsupported_media_type", "document"),
    ({"type": "file", "file": "x"}, "invalid_request", "file_data"),
    ({"type": "video_url", "video_url": ["https://a/1.jpg"]}, "invalid_request", "must be a URL"),
])
def test_bad_parts_are_400_naming_the_part(part, code, words):
    with pytest.raises(InvalidRequest) as info:
        parse(user(text("x"), part))
    assert info.value.status == 400 and info.value.code == code and words in info.value.message
    assert info.value.param == "messages[0].content[1]"


# ------------------------------------------------------------------ turns


def test_only_the_newest_user_message_sends_media():
    old = data_url("image/png", PNG)
    chat = parse(
        {"role": "system", "content": "be brief"},
        user(text("what is this?"), image(old)),
        {"role": "assistant", "content": "A cat."},
        user(text("and this one?"), image("https://cdn.example/dog.jpg")),
    )
    assert chat.messages[1] == ("user", "what is this?\n[earlier image]")
    assert chat.messages[3] == ("user", "and this one?")
    assert [p.source for p in chat.media] == ["https://cdn.example/dog.jpg"]


def test_earlier_media_are_not_decoded_or_limited():
    """History may hold what the newest turn could not: it only becomes a placeholder."""
    bad_old = [image("data:image/png;base64,not base64!") for _ in range(7)]
    chat = parse(user(text("old"), *bad_old, {"type": "file", "file": {"file_data": "x", "filename": "a.pdf"}}),
                 {"role": "assistant", "content": "ok"}, user(text("new")))
    assert chat.messages[0][1].count("[earlier image]") == 7 and "[earlier document: a.pdf]" in chat.messages[0][1]
    assert chat.media == ()


def test_tool_turns_after_the_newest_user_message_keep_its_media():
    chat = parse(user(text("describe"), image(data_url("image/png", PNG))),
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "c1", "type": "function", "function": {"name": "zoom", "arguments": "{}"}}]},
                 {"role": "tool", "tool_call_id": "c1", "content": "zoomed"})
    assert [p.kind for p in chat.media] == ["image"]


@pytest.mark.parametrize(("parts", "code", "words"), [
    ([image(data_url("image/png", PNG))] * 6, "too_many_media", "6 images; the site takes at most 5"),
    ([{"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}}] * 2, "too_many_media", "at most 1"),
    ([image(data_url("image/png", PNG)), {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}}],
     "mixed_media", "mixes audio, image"),
    ([image("https://a/x.png"), {"type": "video_url", "video_url": {"url": "https://a/x.mp4"}}], "mixed_media",
     "separate requests"),
])
def test_turn_limits(parts, code, words):
    with pytest.raises(InvalidRequest) as info:
        parse(user(*parts))
    assert info.value.code == code and words in info.value.message


def test_images_and_documents_may_share_a_turn():
    five_images = [image(data_url("image/png", PNG))] * 5
    pdf = {"type": "file", "file": {"file_data": b64(PDF), "filename": "a.pdf"}}
    assert [p.kind for p in parse(user(*five_images, pdf)).media] == ["image"] * 5 + ["document"]


# ------------------------------------------------------------------ pieces


@pytest.mark.parametrize(("data", "mime"), [
    (PNG, "image/png"), (JPEG, "image/jpeg"), (b"GIF89a..", "image/gif"), (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
    (WAV, "audio/wav"), (b"ID3\x04", "audio/mpeg"), (b"\xff\xfb\x90", "audio/mpeg"), (PDF, "application/pdf"),
    (b"\0\0\0\x20ftypisom", "video/mp4"), (b"\0\0\0\x20ftypM4A ", "audio/mp4"), (b"\0\0\0\x18ftypheic", "image/heic"),
    (b"\x1aE\xdf\xa3", "video/webm"), (b"hello", ""), (b"", ""),
])
def test_sniff(data, mime):
    assert media_parts.sniff(data) == mime


@pytest.mark.parametrize(("name", "mime", "expected"), [
    ("cat.png", "image/png", "cat.png"),
    ("cat", "image/png", "cat.png"),
    ("download.php", "image/jpeg", "download.php.jpg"),
    ("a/b\\c.pdf", "application/pdf", "c.pdf"),
    ("\x00evil\n.txt", "text/plain", "evil.txt"),
    ("", "audio/wav", "file.wav"),
    ("x" * 300 + ".pdf", "application/pdf", "x" * 96 + ".pdf"),
    ("报告.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "报告.docx"),
])
def test_with_extension(name, mime, expected):
    assert media_parts.with_extension(name, mime) == expected


@pytest.mark.parametrize(("kind", "type_", "file_class", "parsed"), [
    ("image", "image", "vision", False), ("document", "file", "document", True),
    ("audio", "audio", "audio", False), ("video", "video", "video", False),
])
def test_file_entry(kind, type_, file_class, parsed):
    part = media_parts.MediaPart(kind, "p", "", mime="x/y", filename="n.bin", data=b"12345")
    entry = media_parts.file_entry(part, file_id="fid", url="https://u", task_id="task", now_ms=1000, parsed=parsed)
    assert (entry["type"], entry["showType"], entry["file_class"]) == (type_, type_, file_class)
    assert entry["id"] == entry["itemId"] == entry["file"]["id"] == "fid" and entry["url"] == "https://u"
    assert entry["size"] == 5 and entry["file_type"] == "x/y" and entry["status"] == "uploaded"
    assert ("parse_meta" in entry["file"]["meta"]) is parsed and (entry.get("context") == "full") is parsed


def test_repr_never_holds_the_bytes():
    part = media_parts.MediaPart("image", "p", "data:image/png;base64," + "A" * 1000, mime="image/png", data=PNG)
    assert "AAAA" not in repr(part) and str(len(PNG)) in repr(part)


def test_completion_payload_carries_files():
    payload = t.completion_payload(model="m", chat_id="c", content="x", chat_type="t2t", config={}, fid="f",
                                   timestamp=1, files=[{"type": "image", "url": "u"}])
    assert payload["messages"][0]["files"] == [{"type": "image", "url": "u"}]
