"""Self-test of the chat.qwen.ai emulator, over a real loopback socket with ``requests``."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest
import requests

from tests.fake_qwen import DEFAULT_MODELS, FAULTS, FakeQwen, Scenario, make_jwt
from tests.helpers import (
    MODEL, TIMEOUT, delta, headers, new_chat, parse_sse, post_turn, raw_chunks, run_turn, stream_events, turn_body,
)

# ------------------------------------------------------------ the happy stream


def test_thinking_stream_event_sequence(fake: FakeQwen, base: str) -> None:
    fake.configure(answer="Server-Sent Events is a one-way HTTP stream.",
                   thinking=["The user wants a definition.", "Keep it to one sentence."],
                   thinking_titles=["Defining SSE", "Being brief"])
    chat_id = new_chat(base)
    resp = post_turn(base, chat_id, turn_body(chat_id, fid="fid-abc"))
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = stream_events(resp)

    created = events[0]["response.created"]
    assert created["chat_id"] == chat_id and created["parent_id"] == "fid-abc"
    assert created["response_index"] == "0"
    rid = created["response_id"]

    phases = [(delta(e).get("phase"), delta(e)["status"]) for e in events[1:]]
    n_think = phases.index(("thinking_summary", "finished"))
    assert n_think >= 4 and all(p == ("thinking_summary", "typing") for p in phases[:n_think])
    assert all(p == ("answer", "typing") for p in phases[n_think + 1:-1])
    assert phases[-1] == ("answer", "finished")
    assert "[DONE]" not in events

    snapshots = [delta(e)["extra"]["summary_thought"]["content"] for e in events[1:n_think + 1]]
    for before, after in zip(snapshots, snapshots[1:]):
        assert len(after) >= len(before) and after[len(before) - 1].startswith(before[-1])
        assert after[:len(before) - 1] == before[:-1]
    assert snapshots[-1] == fake.scenario.thinking
    assert delta(events[n_think])["extra"]["summary_title"]["content"] == fake.scenario.thinking_titles

    answers = events[n_think + 2:-1]
    assert "".join(delta(e)["content"] for e in answers) == fake.scenario.answer
    outputs = [e["usage"]["output_tokens"] for e in answers]
    assert outputs == sorted(outputs) and outputs[-1] > outputs[0]
    usage = answers[-1]["usage"]
    assert usage["input_tokens"] == 812 and usage["total_tokens"] == 812 + usage["output_tokens"]
    assert usage["output_tokens_details"]["reasoning_tokens"] > 0
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert all(e["response_id"] == rid and isinstance(e["timestamp"], int) for e in answers)
    assert list(delta(events[-1])) == ["content", "role", "status", "phase"]

    chat = fake.chats[chat_id]
    assert chat["current_response_id"] == rid and [m["role"] for m in chat["messages"]] == ["user", "assistant"]


def test_wire_uses_python_json_spacing(fake: FakeQwen, base: str) -> None:
    chat_id = new_chat(base)
    raw = b"".join(raw_chunks(post_turn(base, chat_id, turn_body(chat_id))))
    assert b'"phase": "answer"' in raw and b'"phase":"answer"' not in raw


def test_fast_mode_and_thinking_disabled_send_no_thinking(fake: FakeQwen, base: str) -> None:
    fake.configure(thinking=["hidden"])
    _, events = run_turn(base, thinking=False)
    assert {delta(e).get("phase") for e in events[1:]} == {"answer"}


def test_without_output_schema_phase_keys_vanish(fake: FakeQwen, base: str) -> None:
    fake.configure(thinking=["some thought"])
    _, events = run_turn(base, schema=None)
    assert all("phase" not in delta(e) for e in events[1:])


def test_think_style_is_incremental_text(fake: FakeQwen, base: str) -> None:
    fake.configure(thinking=["first", "second"], thinking_style="think")
    _, events = run_turn(base)
    think = [delta(e)["content"] for e in events[1:] if delta(e).get("phase") == "think"
             and delta(e)["status"] == "typing"]
    assert "".join(think) == "first\n\nsecond"


def test_search_events_precede_answer(fake: FakeQwen, base: str) -> None:
    results = [{"title": "SSE", "url": "https://example.com/sse", "hostname": "example.com", "snippet": "s"}]
    fake.configure(search_results=results, answer="See [[1]].")
    _, events = run_turn(base, auto_search=True, thinking=False)
    search = [e for e in events[1:] if delta(e).get("phase") == "web_search"]
    assert [delta(e)["status"] for e in search] == ["typing", "finished"]
    assert delta(search[-1])["extra"]["web_search_info"] == results
    _, plain = run_turn(base, auto_search=False, thinking=False)
    assert all(delta(e).get("phase") != "web_search" for e in plain[1:])


def test_reply_callable_sees_user_text(fake: FakeQwen, base: str) -> None:
    fake.configure(reply=lambda text: text.upper())
    _, events = run_turn(base, content="héllo wörld", thinking=False)
    assert "".join(delta(e)["content"] for e in events[1:]) == "HÉLLO WÖRLD"


def test_scripted_replies_are_taken_one_per_turn(fake: FakeQwen, base: str) -> None:
    fake.configure(reply=lambda text: "from reply")
    fake.script("first", "second")
    resp = requests.post(f"{base}/__fake__/script", json={"replies": ["third"]}, timeout=TIMEOUT)
    assert resp.json() == {"queued": 3}
    answers = ["".join(delta(e)["content"] for e in run_turn(base, thinking=False)[1][1:]) for _ in range(4)]
    assert answers == ["first", "second", "third", "from reply"]
    detail = requests.get(f"{base}/__fake__/script", timeout=TIMEOUT)
    assert detail.status_code == 405
    assert requests.post(f"{base}/__fake__/script", json={"replies": [1]}, timeout=TIMEOUT).status_code == 400


# ------------------------------------------------------------ validation and gates


def test_chat_id_required_and_must_exist(fake: FakeQwen, base: str) -> None:
    resp = post_turn(base, None, turn_body("x"))
    assert resp.status_code == 200 and resp.headers["x-actual-status-code"] == "400"
    assert resp.json()["data"] == {"code": "Bad_Request",
                                   "details": "RequestValidationError: Field 'chat_id': Field required"}
    resp = post_turn(base, "no-such-chat", turn_body("no-such-chat"))
    assert resp.json()["data"] == {"code": "Not_Found", "details": "CHAT_NOT_FOUND"}
    assert resp.headers["x-actual-status-code"] == "404"
    theirs = new_chat(base, make_jwt("someone-else"))
    resp = post_turn(base, theirs, turn_body(theirs))
    assert resp.json()["data"]["code"] == "Not_Found"


def test_exactly_one_message_and_streaming_only(fake: FakeQwen, base: str) -> None:
    chat_id = new_chat(base)
    body = turn_body(chat_id)
    body["messages"] = body["messages"] * 2
    resp = post_turn(base, chat_id, body)
    assert resp.json()["data"] == {"code": "Bad_Request", "details": "Invalid input too many messages"}
    resp = post_turn(base, chat_id, turn_body(chat_id, stream=False))
    assert resp.json()["success"] is False and resp.json()["data"]["code"] == "Bad_Request"


def test_version_header_gate(fake: FakeQwen, base: str) -> None:
    chat_id = new_chat(base)
    resp = post_turn(base, chat_id, turn_body(chat_id), headers(version=False))
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    assert resp.json()["data"]["code"] == "Bad_Request"
    fake.configure(require_version_header=False)
    resp = post_turn(base, chat_id, turn_body(chat_id), headers(version=False))
    assert resp.headers["Content-Type"].startswith("text/event-stream")


def test_bearer_without_cookie_gets_x5sec(fake: FakeQwen, base: str) -> None:
    requests.post(f"{base}/api/v2/chats/new", json={"models": [MODEL]}, headers=headers(cookie=False),
                  timeout=TIMEOUT).raise_for_status()
    chat_id = new_chat(base)
    resp = post_turn(base, chat_id, turn_body(chat_id), headers(cookie=False))
    assert resp.json()["ret"][0] == "FAIL_SYS_USER_VALIDATE" and "punish?x5secdata=" in resp.json()["data"]["url"]
    fake.configure(require_cookie=False)
    assert len(stream_events(post_turn(base, chat_id, turn_body(chat_id), headers(cookie=False)))) > 2


def sized_body(chat_id: str, char: str, size: int) -> bytes:
    """A turn body of exactly ``size`` bytes of compact UTF-8 (as the browser sends it), padded with ``char``."""
    def encode(content: str) -> bytes:
        return json.dumps(turn_body(chat_id, content), ensure_ascii=False, separators=(",", ":")).encode()

    room = size - len(encode(""))
    unit = len(char.encode())
    body = encode(char * (room // unit) + "a" * (room % unit))
    assert len(body) == size
    return body


def post_raw(base: str, chat_id: str, body: bytes) -> requests.Response:
    return requests.post(f"{base}/api/v2/chat/completions?chat_id={chat_id}", data=body, headers=headers(),
                         stream=True, timeout=TIMEOUT)


@pytest.mark.parametrize("char", ["a", "长", "😀"])  # 1, 3 and 4 bytes of UTF-8 per character
@pytest.mark.parametrize(("size", "refused"), [(127_999, False), (128_000, True), (140_000, True)])
def test_the_size_captcha_counts_bytes_of_the_body(fake: FakeQwen, base: str, char: str, size: int,
                                                   refused: bool) -> None:
    chat_id = new_chat(base)
    resp = post_raw(base, chat_id, sized_body(chat_id, char, size))
    if refused:
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.json()["ret"][0] == "FAIL_SYS_USER_VALIDATE" and resp.json()["ret"][1].startswith("RGV587_ERROR::SM::")
    else:
        assert resp.headers["Content-Type"].startswith("text/event-stream") and len(stream_events(resp)) > 2


def test_44000_chinese_characters_draw_the_size_captcha(fake: FakeQwen, base: str) -> None:
    chat_id = new_chat(base)  # R1#147: 44,000 characters, ≈129 KB of UTF-8, were refused
    body = json.dumps(turn_body(chat_id, "长" * 44_000), ensure_ascii=False, separators=(",", ":")).encode()
    assert post_raw(base, chat_id, body).json()["ret"][0] == "FAIL_SYS_USER_VALIDATE"
    fake.configure(x5sec_body_bytes=None)
    assert post_raw(base, chat_id, body).headers["Content-Type"].startswith("text/event-stream")


@pytest.mark.parametrize("path", ["/api/v2/chats/new", "/api/v2/chat/completions?chat_id=x"])
def test_expired_invalid_and_missing_tokens(fake: FakeQwen, base: str, path: str) -> None:
    fake.invalid_tokens.add(revoked := make_jwt("revoked"))
    for token in (make_jwt(exp=int(time.time()) - 10), revoked, "not-a-jwt"):
        resp = requests.post(base + path, json={"models": [MODEL]}, headers=headers(token), timeout=TIMEOUT)
        assert resp.status_code == 200
        body = resp.json()
        assert body["success"] is False and body["data"] == {"code": "unauthorized", "details":
                                                             "Token has expired, please log in again."}
    resp = requests.post(base + path, json={"models": [MODEL]}, timeout=TIMEOUT,
                         headers={"Content-Type": "application/json", "version": "0.2.0"})
    assert resp.status_code == 401


def test_chats_new_requires_models(fake: FakeQwen, base: str) -> None:
    resp = requests.post(f"{base}/api/v2/chats/new", json={"title": "x"}, headers=headers(), timeout=TIMEOUT)
    assert resp.json()["success"] is False and resp.json()["data"]["code"] == "Bad_Request"


# ------------------------------------------------------------ models and auth


def test_models_endpoints_and_v2_fallback_switch(fake: FakeQwen, base: str) -> None:
    v1 = requests.get(f"{base}/api/models", timeout=TIMEOUT).json()
    assert [m["id"] for m in v1["data"]] == [m["id"] for m in DEFAULT_MODELS]
    assert v1["data"][0]["id"] == "qwen3.7-plus" and v1["data"][0]["info"]["meta"]["abilities"]["thinking"] == 3
    v2 = requests.get(f"{base}/api/v2/models/", timeout=TIMEOUT).json()
    assert v2["success"] is True and v2["data"]["data"] == v1["data"]
    assert requests.get(f"{base}/api/v2/models", timeout=TIMEOUT).status_code == 404
    fake.configure(models_v2_available=False)
    assert requests.get(f"{base}/api/v2/models/", timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{base}/api/models", timeout=TIMEOUT).status_code == 200


def test_auth_profile_sources(fake: FakeQwen, base: str) -> None:
    token = make_jwt("user-7")
    url = f"{base}/api/v1/auths/"
    by_cookie = requests.get(url, headers={"Cookie": f"token={token}"}, timeout=TIMEOUT).json()
    assert by_cookie["token"] == token and by_cookie["id"] == "user-7" and by_cookie["expires_at"] > time.time()
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT).json()["id"] == "user-7"
    fake.sessions["sess-1"] = token
    assert requests.get(url, headers={"Cookie": "qwen_session=sess-1; cna=x"}, timeout=TIMEOUT).json()["token"] == token
    assert requests.get(url, headers={"Cookie": "qwen_session=nope"}, timeout=TIMEOUT).status_code == 401
    assert requests.get(f"{base}/api/v1/auths", headers={"Cookie": f"token={token}"},
                        timeout=TIMEOUT).status_code == 401


def test_signin_v1_and_v2(fake: FakeQwen, base: str) -> None:
    fake.configure(signin_generations=("v2", "v1"))
    fake.accounts["a@example.com"] = hashlib.sha256(b"pw").hexdigest()
    good = {"email": "a@example.com", "password": hashlib.sha256(b"pw").hexdigest()}
    v1 = requests.post(f"{base}/api/v1/auths/signin", json=good, timeout=TIMEOUT)
    assert v1.status_code == 200 and v1.json()["token"].count(".") == 2
    plain = {"email": "a@example.com", "password": "pw"}
    assert requests.post(f"{base}/api/v1/auths/signin", json=plain, timeout=TIMEOUT).status_code == 401
    v2 = requests.post(f"{base}/api/v2/auths/signin", json=good, timeout=TIMEOUT)
    assert v2.status_code == 200 and "token" not in v2.json()["data"] and v2.cookies["token"].count(".") == 2
    assert requests.post(f"{base}/api/v2/auths/signin", json=plain, timeout=TIMEOUT).status_code == 401


# ------------------------------------------------------------ chat management and continuation


def test_continuation_and_chat_detail(fake: FakeQwen, base: str) -> None:
    chat_id, first = run_turn(base, thinking=False, fid="u1")
    rid1 = first[0]["response.created"]["response_id"]
    resp = post_turn(base, chat_id, turn_body(chat_id, "and then?", parent_id=rid1, fid="u2", thinking=False))
    rid2 = stream_events(resp)[0]["response.created"]["response_id"]
    assert fake.chats[chat_id]["turns"][1]["parent_id"] == rid1
    detail = requests.get(f"{base}/api/v2/chats/{chat_id}", headers=headers(), timeout=TIMEOUT).json()["data"]
    assert detail["currentId"] == rid2 == detail["chat"]["history"]["currentId"]
    assistant = detail["chat"]["history"]["messages"][rid2]
    assert assistant["content_list"][-1] == {"content": fake.scenario.answer, "phase": "answer",
                                             "status": "finished"}
    assert detail["chat"]["history"]["messages"][rid1]["childrenIds"] == ["u2"]


def test_chat_list_pages_and_deletes(fake: FakeQwen, base: str) -> None:
    ids = [new_chat(base) for _ in range(25)]
    page = lambda n: requests.get(f"{base}/api/v2/chats/?page={n}", headers=headers(), timeout=TIMEOUT).json()
    assert len(page(1)["data"]) == 20 and len(page(2)["data"]) == 5 and page(3)["data"] == []
    assert page(1)["data"][0]["id"] == ids[-1]
    resp = requests.delete(f"{base}/api/v2/chats/{ids[0]}", headers=headers(), timeout=TIMEOUT)
    assert resp.json()["data"] == {"status": True} and ids[0] not in fake.chats
    requests.delete(f"{base}/api/v2/chats/", headers=headers(), timeout=TIMEOUT).raise_for_status()
    assert page(1)["data"] == []
    settings = requests.get(f"{base}/api/v2/users/user/settings", headers=headers(), timeout=TIMEOUT).json()
    assert "model_config" in settings["data"]


# ------------------------------------------------------------ framing switches


def test_split_writes_cut_events_and_utf8(fake: FakeQwen, base: str) -> None:
    fake.configure(answer="你好，世界！Hello", thinking=[])
    chat_id = new_chat(base)
    chunks = raw_chunks(post_turn(base, chat_id, turn_body(chat_id)))
    events = parse_sse(b"".join(chunks))
    assert len(chunks) >= 2 * len(events)
    broken = 0
    for chunk in chunks:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            broken += 1
    assert broken > 0


def test_coalesce_puts_several_events_in_one_write(fake: FakeQwen, base: str) -> None:
    fake.configure(coalesce=True, answer="x" * 80)
    chat_id = new_chat(base)
    chunks = raw_chunks(post_turn(base, chat_id, turn_body(chat_id)))
    assert len(chunks) < len(parse_sse(b"".join(chunks)))


def test_cumulative_content_mode(fake: FakeQwen, base: str) -> None:
    fake.configure(content_mode="cumulative", answer="abcdefghijklmnopqrstuvwxyz", chunk_chars=5)
    _, events = run_turn(base, thinking=False)
    texts = [delta(e)["content"] for e in events[1:-1]]
    assert texts[-1] == "abcdefghijklmnopqrstuvwxyz"
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(texts, texts[1:]))


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
def test_line_endings_done_and_keepalive(fake: FakeQwen, base: str, ending: str) -> None:
    fake.configure(line_ending=ending, send_done=True, keepalive_comments=True)
    chat_id = new_chat(base)
    raw = b"".join(raw_chunks(post_turn(base, chat_id, turn_body(chat_id))))
    assert ending.encode() * 2 in raw and b": keep-alive" in raw
    if ending == "\r":
        assert b"\n" not in raw
    assert parse_sse(raw)[-1] == "[DONE]"


def test_first_token_delay(fake: FakeQwen, base: str) -> None:
    fake.configure(first_token_delay=0.2)
    chat_id = new_chat(base)
    started = time.monotonic()
    stream_events(post_turn(base, chat_id, turn_body(chat_id)))
    assert time.monotonic() - started >= 0.2


# ------------------------------------------------------------ faults

EXPECTED: dict[str, tuple[int, str]] = {
    "http_401": (401, "application/json"), "http_403": (403, "application/json"),
    "http_404": (404, "application/json"), "http_429": (429, "application/json"),
    "http_500": (500, "text/plain"), "http_502": (502, "text/html"), "http_503": (503, "text/plain"),
    "http_504": (504, "text/html"), "bad_request": (200, "application/json"),
    "rate_limited": (200, "application/json"), "unauthorized": (200, "application/json"),
    "chat_not_found": (200, "application/json"), "parallel_limited": (200, "application/json"),
    "envelope_top_level": (200, "application/json"), "x5sec": (200, "application/json"),
    "waf_html": (200, "text/html"), "waf_html_403": (403, "text/html"),
    "gateway_html_405": (405, "text/html"), "non_json_200": (200, "application/json"),
    **{name: (200, "text/event-stream") for name in (
        "stream_error_string", "stream_error_code", "stream_quota_limit", "stream_data_inspection",
        "stream_success_false", "stream_delta_error", "error_after_content", "empty_stream",
        "created_only", "x5sec_in_stream", "waf_in_stream")},
}


def test_fault_table_is_complete() -> None:
    assert set(EXPECTED) == FAULTS


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_every_fault_answers_as_intended(fake: FakeQwen, base: str, name: str) -> None:
    chat_id = new_chat(base)
    fake.configure(fault=name)
    resp = post_turn(base, chat_id, turn_body(chat_id))
    status, content_type = EXPECTED[name]
    assert resp.status_code == status and resp.headers["Content-Type"].startswith(content_type)
    raw = b"".join(raw_chunks(resp))
    if content_type == "text/event-stream" and name != "waf_in_stream":
        events = [json.loads(e) for e in parse_sse(raw)]
        assert len(events) == {"empty_stream": 0, "created_only": 1}.get(name, len(events))
        assert name in ("empty_stream", "created_only") or "choices" not in events[-1] or \
            delta(events[-1])["status"] == "error"
    if name.startswith("waf"):
        assert raw.startswith(b"<!doctypehtml>") and b"aliyun_waf_aa" in raw and len(raw) > 15000
    if name == "envelope_top_level":
        assert json.loads(raw)["code"] == "Bad_Request"
    if name == "rate_limited":
        assert json.loads(raw)["data"]["num"] == 3


def test_fault_times_and_endpoint(fake: FakeQwen, base: str) -> None:
    fake.configure(fault="http_503", fault_endpoint="chats_new", fault_times=1)
    url = f"{base}/api/v2/chats/new"
    assert requests.post(url, json={"models": [MODEL]}, headers=headers(), timeout=TIMEOUT).status_code == 503
    assert requests.post(url, json={"models": [MODEL]}, headers=headers(), timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("fault", ["http_401", "unauthorized"])
def test_a_spurious_401_fires_once_and_the_same_token_then_works(fake: FakeQwen, base: str, fault: str) -> None:
    fake.configure(fault=fault, fault_times=1)
    chat_id = new_chat(base)
    refused = post_turn(base, chat_id, turn_body(chat_id))
    assert refused.status_code == 401 if fault == "http_401" else refused.json()["data"]["code"] == "unauthorized"
    profile = requests.get(f"{base}/api/v1/auths/", headers=headers(), timeout=TIMEOUT).json()
    assert profile["id"] == "fake-user-0001" and profile["token"]  # the session still vouches for it
    assert len(stream_events(post_turn(base, chat_id, turn_body(chat_id)))) > 2


def test_stream_faults_in_detail(fake: FakeQwen, base: str) -> None:
    chat_id = new_chat(base)
    fake.configure(fault="error_after_content", answer="a" * 64)
    events = stream_events(post_turn(base, chat_id, turn_body(chat_id)))
    assert "response.created" in events[0] and delta(events[1])["phase"] == "answer"
    assert events[-1] == {"error": {"code": "internal_error", "details": "Internal error, please try again later."}}
    fake.configure(fault="stream_data_inspection")
    events = stream_events(post_turn(base, chat_id, turn_body(chat_id)))
    assert events[-1]["error"]["code"] == "data_inspection_failed" and events[-1]["response_index"] == 0


# ------------------------------------------------------------ broken connections


def test_disconnect_breaks_chunked_body(fake: FakeQwen, base: str) -> None:
    fake.configure(disconnect_after_events=2)
    chat_id = new_chat(base)
    resp = post_turn(base, chat_id, turn_body(chat_id))
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        raw_chunks(resp)
    assert fake.wait_streams_closed(TIMEOUT)


def test_stall_is_released_by_reset(fake: FakeQwen, base: str) -> None:
    fake.configure(stall_after_events=2)
    chat_id = new_chat(base)
    released: list[bool] = []

    def release() -> None:
        released.append(fake.wait_stalled(TIMEOUT))
        fake.reset()

    helper = threading.Thread(target=release)
    helper.start()
    events = parse_sse(b"".join(raw_chunks(post_turn(base, chat_id, turn_body(chat_id)))))
    helper.join(TIMEOUT)
    assert released == [True] and len(events) == 2
    assert fake.wait_streams_closed(TIMEOUT)


def test_open_streams_drop_after_client_closes(fake: FakeQwen, base: str) -> None:
    fake.configure(chunk_delay=0.02, answer="z" * 2000, chunk_chars=4)
    chat_id = new_chat(base)
    resp = post_turn(base, chat_id, turn_body(chat_id))
    # Keep the iterator: a discarded one is collected at once and urllib3 then closes the connection.
    chunks = resp.iter_content(None)
    next(chunks)
    assert fake.open_streams == 1
    resp.close()
    assert fake.wait_streams_closed(TIMEOUT)


# ------------------------------------------------------------ control surface


def test_configure_rejects_unknown_fields_and_values(fake: FakeQwen) -> None:
    with pytest.raises(TypeError):
        fake.configure(no_such_switch=True)
    with pytest.raises(ValueError):
        fake.configure(fault="no_such_fault")
    assert Scenario().fault is None and fake.scenario.split_writes is True


def test_recorded_requests_and_control_api(fake: FakeQwen, base: str) -> None:
    chat_id = new_chat(base)
    recorded = fake.requests_to("/api/v2/chats/new", "POST")
    assert len(recorded) == 1 and recorded[0].headers["VERSION"] == "0.2.0"
    assert recorded[0].json["models"] == [MODEL] and recorded[0].cookies["token"]
    resp = requests.post(f"{base}/__fake__/scenario", json={"answer": "via control"}, timeout=TIMEOUT)
    assert resp.json()["answer"] == "via control"
    events = stream_events(post_turn(base, chat_id, turn_body(chat_id, thinking=False)))
    assert "".join(delta(e)["content"] for e in events[1:]) == "via control"
    logged = requests.get(f"{base}/__fake__/requests", timeout=TIMEOUT).json()
    assert [r["path"] for r in logged] == ["/api/v2/chats/new", "/api/v2/chat/completions"]
    requests.post(f"{base}/__fake__/reset", timeout=TIMEOUT).raise_for_status()
    assert fake.requests == [] and fake.scenario.answer == Scenario().answer


@pytest.mark.parametrize("silence", [{"first_token_delay": 30.0}, {"chunk_delay": 30.0}, {"stall_after_events": 2}])
def test_a_client_that_hangs_up_during_a_silence_ends_the_stream(fake: FakeQwen, base: str, silence: dict) -> None:
    """The site notices a closed connection while it thinks; a 30 s delay must not hold the stream open."""
    fake.configure(answer="ab", chunk_chars=1, split_writes=False, **silence)
    chat_id = new_chat(base)
    resp = post_turn(base, chat_id, turn_body(chat_id, thinking=False))
    assert next(resp.iter_content(None)).startswith(b"data: ")
    assert fake.open_streams == 1
    started = time.monotonic()
    resp.close()
    assert fake.wait_streams_closed(timeout=2), "the stream outlived its client"
    assert time.monotonic() - started < 1.0
