"""Self-test of the emulator's generated media (§8), over a real loopback socket with ``requests``."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from tests.fake_qwen import FakeQwen, FakeQwenServer, make_jwt
from tests.fake_qwen.media_out import (
    BUSY_DETAILS, IMAGE_REMARK, NOT_READY_PAGE, TINY_MP4, TINY_PNG, VIDEO_FAILED_MESSAGE,
)
from tests.fake_qwen.wire import INSPECTION_DETAILS, QUOTA_DETAILS
from tests.helpers import FIXTURES, TIMEOUT, delta, grant, headers, new_chat, post_turn, put, stream_events, turn_body


@pytest.fixture
def base(fake_server: FakeQwenServer, fake: FakeQwen) -> str:
    return fake_server.base_url


def media_body(chat_id: str, chat_type: str, prompt: str = "a red fox", size: str | None = None,
               files: list[dict] | None = None, **kw: Any) -> dict:
    body = turn_body(chat_id, prompt, thinking=False, chat_type=chat_type,
                     stream=chat_type not in ("t2v", "i2v"), **kw)
    message = body["messages"][0]
    message["files"] = files or []
    if size is not None:
        body["size"] = message["extra"]["meta"]["size"] = size
    return body


def image_turn(base: str, chat_type: str = "t2i", **kw: Any) -> tuple[str, list]:
    chat_id = new_chat(base, chat_type=chat_type)
    resp = post_turn(base, chat_id, media_body(chat_id, chat_type, **kw))
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    return chat_id, stream_events(resp)


def image_urls(events: list) -> list[str]:
    return [delta(e)["content"] for e in events[1:] if delta(e).get("phase") in ("image_gen", "image_edit")
            and delta(e)["content"]]


def submit_video(base: str, chat_type: str = "t2v", **kw: Any) -> tuple[str, dict]:
    chat_id = new_chat(base, chat_type=chat_type)
    resp = post_turn(base, chat_id, media_body(chat_id, chat_type, **kw))
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    return chat_id, resp.json()


def task_status(base: str, task_id: str, generation: str = "v2", hdrs: dict | None = None) -> requests.Response:
    path = f"/api/v2/task/status/{task_id}" if generation == "v2" else f"/api/v1/tasks/status/{task_id}"
    return requests.get(base + path, headers=hdrs or headers(), timeout=TIMEOUT)


# ------------------------------------------------------------ images


@pytest.mark.parametrize(("size", "hw"), [(None, [1024, 1024]), ("16:9", [1536, 2688]), ("1:1", [2048, 2048])])
def test_t2i_streams_the_url_in_image_gen_content(fake, base, size, hw):
    chat_id, events = image_turn(base, size=size)
    assert "response.created" in events[0]
    urls = image_urls(events)
    assert len(urls) == 2 and len(set(urls)) == 1, "the URL is repeated; clients de-duplicate"
    assert "/output/" in urls[0] and f"/t2i/{chat_id}/" in urls[0] and "?key=" in urls[0]
    typing = [delta(e) for e in events[1:-1]]
    assert all(d["extra"]["output_image_hw"] == [hw] for d in typing)
    assert events[1]["usage"]["output_image_count"] == 1
    assert (delta(events[-1])["phase"], delta(events[-1])["status"]) == ("image_gen", "finished")
    got = requests.get(urls[0], timeout=TIMEOUT)
    assert got.status_code == 200 and got.content == TINY_PNG and got.headers["Content-Type"] == "image/png"


def test_cdn_refuses_a_wrong_key_and_answers_not_ready_first(fake, base):
    fake.configure(cdn_not_ready=1)
    url = image_urls(image_turn(base)[1])[0]
    early = requests.get(url, timeout=TIMEOUT)
    assert early.status_code == 404 and len(early.content) == 226 and early.text == NOT_READY_PAGE
    assert requests.get(url, timeout=TIMEOUT).content == TINY_PNG
    assert requests.get(url.split("?")[0] + "?key=forged", timeout=TIMEOUT).status_code == 403


def test_think_and_text_finishes_the_answer_before_the_image(fake, base):
    fake.configure(image_variant="think_and_text")
    events = image_turn(base)[1]
    phases = [(delta(e)["phase"], delta(e)["status"]) for e in events[1:]]
    assert phases.index(("answer", "finished")) < phases.index(("image_gen", "typing"))
    assert [delta(e)["content"] for e in events[1:] if delta(e)["phase"] == "answer"][0] == IMAGE_REMARK
    assert len(image_urls(events)) == 2


def test_image_list_variant_has_the_url_only_in_extra(fake, base):
    fake.configure(image_variant="image_list")
    events = image_turn(base)[1]
    assert image_urls(events) == []
    listed = [d["extra"]["image_list"][0]["image"] for d in map(delta, events[1:]) if "image_list" in d.get("extra", {})]
    assert len(listed) == 1 and requests.get(listed[0], timeout=TIMEOUT).content == TINY_PNG


def test_readback_variant_shows_the_url_only_in_the_chat_after_some_reads(fake, base):
    fake.configure(image_variant="readback", readback_after=2)
    chat_id, events = image_turn(base)
    assert image_urls(events) == [] and not any("http" in json.dumps(e) for e in events[1:])

    def stored() -> str:
        resp = requests.get(f"{base}/api/v2/chats/{chat_id}", headers=headers(), timeout=TIMEOUT)
        assistant = resp.json()["data"]["chat"]["messages"][-1]
        assert assistant["role"] == "assistant" and assistant["content"] == ""
        return assistant["content_list"][0]["content"]

    assert stored() == "" and stored() == ""
    assert stored().startswith(base + "/output/")


def generated(base: str) -> list[dict]:
    """A files[] entry naming a picture the site made for this account, as peers edit them (R1)."""
    return [{"type": "image", "url": image_urls(image_turn(base)[1])[0]}]


def uploaded(base: str) -> list[dict]:
    """A files[] entry for an image uploaded through the emulator's STS grant and OSS bucket."""
    answer = grant(base, token=make_jwt())
    put(base, answer)
    return [{"type": "image", "url": answer["file_url"], "id": answer["file_id"], "file_class": "vision"}]


@pytest.mark.parametrize("phase", ["image_edit", "image_gen"])
@pytest.mark.parametrize("source", [generated, uploaded])
def test_image_edit_takes_files_and_answers_in_either_phase(fake, base, phase, source):
    fake.configure(image_edit_phase=phase)
    events = image_turn(base, "image_edit", files=source(base))[1]
    assert {delta(e)["phase"] for e in events[1:]} == {phase}
    assert "/image_edit/" in image_urls(events)[0]


@pytest.mark.parametrize("chat_type", ["image_edit", "i2v"])
def test_input_images_must_be_the_accounts_own(fake, base, chat_type):
    others = image_urls(image_turn_as(base, make_jwt("someone-else")))[0]
    for url in ("https://cdn.example/in.png", others):
        chat_id = new_chat(base, chat_type=chat_type)
        body = media_body(chat_id, chat_type, files=[{"type": "image", "url": url}])
        resp = post_turn(base, chat_id, body)
        if chat_type == "i2v":
            assert resp.json()["data"]["code"] == "invalid_input"
        else:
            assert stream_events(resp)[-1]["error"]["code"] == "invalid_input"
    assert fake.media_refused_files == ["url is not an upload of this account", "a generated file of another account"]


def image_turn_as(base: str, token: str) -> list:
    chat_id = new_chat(base, token=token, chat_type="t2i")
    return stream_events(post_turn(base, chat_id, media_body(chat_id, "t2i"), hdrs=headers(token)))


@pytest.mark.parametrize(("chat_type", "change"), [
    ("t2i", {"size": "2:1"}),
    ("t2i", {"stream": False}),
    ("t2i", {"sub_chat_type": "t2t"}),
    ("t2i", {"prompt": "  "}),
    ("image_edit", {}),
    ("t2v", {"stream": True}),
    ("t2v", {"size": "auto"}),
    ("i2v", {}),
])
def test_malformed_media_turns_are_refused(fake, base, chat_type, change):
    chat_id = new_chat(base, chat_type=chat_type)
    body = media_body(chat_id, chat_type, prompt=change.pop("prompt", "a fox"), size=change.pop("size", None))
    body.update({k: v for k, v in change.items() if k == "stream"})
    body["messages"][0].update({k: v for k, v in change.items() if k != "stream"})
    answer = post_turn(base, chat_id, body).json()
    assert answer["success"] is False and answer["data"]["code"] == "Bad_Request"


# ------------------------------------------------------------ video


def test_t2v_submit_matches_the_fixture(fake, base):
    fixture = json.loads((FIXTURES / "t2v-submit-response.json").read_text())
    chat_id, answer = submit_video(base, size="9:16")

    def shape(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: shape(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [shape(v) for v in obj]
        return type(obj).__name__

    assert shape(answer) == shape(fixture)
    assert answer["data"]["chat_id"] == chat_id and answer["data"]["messages"][0]["size"] == "9:16"


@pytest.mark.parametrize("generation", ["v1", "v2"])
def test_task_runs_for_n_polls_then_succeeds(fake, base, generation):
    fake.configure(video_polls=2)
    task_id = submit_video(base)[1]["data"]["messages"][0]["extra"]["wanx"]["task_id"]
    answers = [task_status(base, task_id, generation) for _ in range(3)]
    assert all(a.status_code == 200 for a in answers)
    bodies = [a.json() if generation == "v1" else a.json()["data"] for a in answers]
    assert [b["task_status"] for b in bodies] == ["running", "running", "success"]
    assert bodies[0]["content"] == "" and requests.get(bodies[2]["content"], timeout=TIMEOUT).content == TINY_MP4
    if generation == "v2":
        assert set(bodies[2]) == {"chat_type", "task_status", "message", "content", "remaining_time",
                                  "sub_chat_type", "duration"}


@pytest.mark.parametrize(("outcome", "message"), [("failed", VIDEO_FAILED_MESSAGE), ("cancelled", "")])
def test_task_failure_outcomes(fake, base, outcome, message):
    fake.configure(video_polls=0, video_outcome=outcome)
    task_id = submit_video(base)[1]["data"]["messages"][0]["extra"]["wanx"]["task_id"]
    data = task_status(base, task_id).json()["data"]
    assert (data["task_status"], data["message"], data["content"]) == (outcome, message, "")


def test_task_status_v2_refusals_carry_the_actual_status(fake, base):
    missing = task_status(base, "no-such-task")
    assert missing.status_code == 200 and missing.headers["x-actual-status-code"] == "404"
    assert missing.json()["data"]["code"] == "Not_Found"
    task_id = submit_video(base)[1]["data"]["messages"][0]["extra"]["wanx"]["task_id"]
    other = task_status(base, task_id, hdrs=headers(make_jwt("someone-else")))
    assert other.json()["data"]["code"] == "Not_Found"
    bad = task_status(base, task_id, hdrs={"Cookie": "token=not-a-jwt"})
    assert bad.headers["x-actual-status-code"] == "401" and bad.json()["data"]["code"] == "Unauthorized"


@pytest.mark.parametrize(("api", "gone"), [("v1", "v2"), ("v2", "v1")])
def test_only_one_status_generation(fake, base, api, gone):
    fake.configure(task_status_api=api)
    task_id = submit_video(base)[1]["data"]["messages"][0]["extra"]["wanx"]["task_id"]
    assert task_status(base, task_id, gone).status_code == 404
    assert task_status(base, task_id, api).status_code == 200


def test_task_id_elsewhere_or_only_in_the_chat(fake, base):
    fake.configure(video_task_in="elsewhere")
    data = submit_video(base)[1]["data"]
    assert data["messages"][0]["extra"] == {} and data["task"]["taskId"]
    fake.configure(video_task_in="chat_detail")
    chat_id, answer = submit_video(base)
    assert "task" not in json.dumps(answer)
    chat = requests.get(f"{base}/api/v2/chats/{chat_id}", headers=headers(), timeout=TIMEOUT).json()
    task_id = chat["data"]["chat"]["messages"][-1]["extra"]["wanx"]["task_id"]
    assert task_status(base, task_id).json()["success"] is True


def test_i2v_takes_one_first_frame(fake, base):
    task_id = submit_video(base, "i2v", files=uploaded(base))[1]["data"]["messages"][0]["extra"]["wanx"]["task_id"]
    assert task_status(base, task_id).json()["data"]["chat_type"] == "i2v"


# ------------------------------------------------------------ refusals


@pytest.mark.parametrize("chat_type", ["t2i", "t2v"])
@pytest.mark.parametrize(("refusal", "code", "details"), [
    ("quota", "RateLimited", None), ("busy", "RateLimited", BUSY_DETAILS), ("internal", "Bad_Request", None),
])
def test_envelope_refusals(fake, base, chat_type, refusal, code, details):
    fake.configure(media_refusal=refusal, rate_limit_hours=5)
    chat_id = new_chat(base, chat_type=chat_type)
    resp = post_turn(base, chat_id, media_body(chat_id, chat_type))
    assert resp.headers["Content-Type"] == "application/json"
    data = resp.json()["data"]
    assert data["code"] == code and (details is None or data["details"] == details)
    if refusal == "quota":
        assert data["num"] == 5 and (chat_type == "t2v" or data["details"] == QUOTA_DETAILS)


@pytest.mark.parametrize(("refusal", "code"), [("quota_stream", "quota_limit"), ("inspection", "data_inspection_failed")])
def test_stream_refusals_of_image_turns(fake, base, refusal, code):
    fake.configure(media_refusal=refusal)
    chat_id = new_chat(base, chat_type="t2i")
    events = stream_events(post_turn(base, chat_id, media_body(chat_id, "t2i")))
    assert events[-1]["error"]["code"] == code


def test_video_inspection_is_a_json_envelope_and_refusals_can_be_counted(fake, base):
    fake.configure(media_refusal="inspection", media_refusal_times=1)
    chat_id = new_chat(base, chat_type="t2v")
    first = post_turn(base, chat_id, media_body(chat_id, "t2v")).json()
    assert first["data"] == {"code": "data_inspection_failed", "details": INSPECTION_DETAILS}
    assert submit_video(base)[1]["success"] is True
