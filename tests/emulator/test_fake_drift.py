"""Self-test of the emulator's 2026-07/08 behaviours (§14): two candidate answers, think_skip, the header gate."""

from __future__ import annotations

import pytest
import requests

from tests.fake_qwen import FakeQwen
from tests.fake_qwen.drift import RIVAL_ANSWER, RIVAL_SOURCE, RIVAL_THOUGHT
from tests.helpers import delta, headers, new_chat, post_turn, run_turn, stream_events, turn_body

SOURCES = [{"title": "SSE", "url": "https://example.com/sse", "hostname": "example.com", "snippet": "s"}]


def _answers(events: list) -> dict:
    """Answer text per response_id (None: untagged deltas)."""
    texts: dict = {}
    for event in events:
        if "choices" in event and delta(event).get("phase") == "answer":
            key = event.get("response_id")
            texts[key] = texts.get(key, "") + delta(event)["content"]
    return texts


def test_two_candidates_open_with_two_created_events_then_interleave(fake: FakeQwen, base: str) -> None:
    fake.configure(candidates=2, answer="The first candidate's answer, long enough to interleave.",
                   thinking=["first thought"], search_results=SOURCES)
    chat_id, events = run_turn(base, auto_search=True)
    created = [e["response.created"] for e in events[:2]]
    assert [c["response_index"] for c in created] == ["0", "1"]
    first, second = (c["response_id"] for c in created)
    assert first != second and all(c["chat_id"] == chat_id for c in created)
    assert not any("response.created" in e for e in events[2:])
    assert all(e.get("response_id") in (first, second) for e in events[2:])
    assert _answers(events) == {first: fake.scenario.answer, second: RIVAL_ANSWER * 2}
    owners = [e["response_id"] for e in events[2:]]
    switches = sum(a != b for a, b in zip(owners, owners[1:]))
    assert switches >= 4, "the two answers must interleave, not follow one another"
    assert owners[0] == first
    rival = [e for e in events[2:] if e["response_id"] == second]
    assert any(RIVAL_THOUGHT in str(delta(e).get("extra")) for e in rival)
    assert any(RIVAL_SOURCE["url"] in str(delta(e).get("extra")) for e in rival)
    usage = {rid: [e["usage"] for e in events[2:] if e["response_id"] == rid and "usage" in e][-1]
             for rid in (first, second)}
    assert usage[first]["output_tokens"] != usage[second]["output_tokens"]
    turn = fake.chats[chat_id]["turns"][-1]
    assert turn["candidates"] == [first, second] and turn["response_id"] == first


def test_rival_deltas_may_come_first(fake: FakeQwen, base: str) -> None:
    fake.configure(candidates=2, candidate_order="rival_first")
    _, events = run_turn(base, thinking=False)
    second = events[1]["response.created"]["response_id"]
    assert events[2]["response_id"] == second


def test_untagged_deltas_belong_to_candidate_zero(fake: FakeQwen, base: str) -> None:
    fake.configure(candidates=2, candidate_untagged=True, answer="Tagged and untagged pieces of answer zero.")
    _, events = run_turn(base, thinking=False)
    first = events[0]["response.created"]["response_id"]
    texts = _answers(events)
    assert texts[None] and texts[first]
    zero = "".join(delta(e)["content"] for e in events[2:]
                   if delta(e).get("phase") == "answer" and e.get("response_id") in (None, first))
    assert zero == fake.scenario.answer


def test_one_candidate_by_default(fake: FakeQwen, base: str) -> None:
    _, events = run_turn(base)
    assert sum("response.created" in e for e in events) == 1


def _turn(base: str, model: str, thinking: bool) -> list:
    chat_id = new_chat(base)
    body = turn_body(chat_id, thinking=thinking)
    body["model"] = body["messages"][0]["models"][0] = model
    resp = post_turn(base, chat_id, body)
    assert resp.status_code == 200
    return stream_events(resp)


def test_think_skip_off_model_refuses_thinking_off_in_stream(fake: FakeQwen, base: str) -> None:
    events = _turn(base, "qwen3.8-max", thinking=False)
    assert "response.created" in events[0]
    assert events[1] == {"error": {"code": "invalid_input", "details": "输入或附件无效。请检查后重试。"}}
    assert len(events) == 2
    assert delta(_turn(base, "qwen3.8-max", thinking=True)[-1])["status"] == "finished"
    assert delta(_turn(base, "qwen3.7-plus", thinking=False)[-1])["status"] == "finished"


@pytest.mark.parametrize("missing", ["Sec-Fetch-Mode", "timezone", "X-Accel-Buffering"])
def test_completion_without_the_browser_header_set_draws_rgv587(fake: FakeQwen, base: str, missing: str) -> None:
    chat_id = new_chat(base)
    hdrs = {k: v for k, v in headers().items() if k != missing}
    resp = post_turn(base, chat_id, turn_body(chat_id), hdrs)
    assert "RGV587" in resp.text
    fake.configure(require_browser_headers=False)
    assert post_turn(base, chat_id, turn_body(chat_id), hdrs).headers["Content-Type"].startswith("text/event-stream")


def test_the_waf_sets_its_cookie_and_can_require_it_back(fake: FakeQwen, base: str) -> None:
    fake.configure(require_waf_cookie=True)
    session = requests.Session()
    hdrs = headers()
    chat = session.post(f"{base}/api/v2/chats/new", json={"models": ["qwen3.7-plus"]}, headers=hdrs, timeout=5)
    issued = chat.cookies.get("acw_tc")
    assert issued and "HttpOnly" in chat.headers["Set-Cookie"]
    chat_id = chat.json()["data"]["id"]
    assert "RGV587" in post_turn(base, chat_id, turn_body(chat_id), hdrs).text, "token= alone is not the jar"
    with_jar = {**hdrs, "Cookie": hdrs["Cookie"] + f"; acw_tc={issued}"}
    resp = post_turn(base, chat_id, turn_body(chat_id), with_jar)
    assert resp.headers["Content-Type"].startswith("text/event-stream") and "Set-Cookie" not in resp.headers
    forged = {**hdrs, "Cookie": hdrs["Cookie"] + "; acw_tc=made-up"}
    assert "RGV587" in post_turn(base, chat_id, turn_body(chat_id), forged).text


def test_the_rival_candidate_can_end_in_its_own_tagged_error(fake: FakeQwen, base: str) -> None:
    fake.configure(candidates=2, candidate_rival_fails=True, answer="Zero finishes normally.")
    _, events = run_turn(base, thinking=False)
    first, second = (e["response.created"]["response_id"] for e in events[:2])
    [error] = [e for e in events if "error" in e]
    assert error["response_id"] == second and error["response_index"] == 1
    assert error["error"]["code"] == "data_inspection_failed"
    assert _answers(events)[first] == fake.scenario.answer
    assert delta([e for e in events if e.get("response_id") == first][-1])["status"] == "finished"
