"""The pure wire layer (``qwen_client.wire``): SSE decoding and failure classification."""

from __future__ import annotations

import json

import pytest

import errors
from config import Settings
from qwen_client.wire import SIZE_CAPTCHA_BYTES, TurnLimit, encode_body
from qwen_client.wire import SSEDecoder, decode_event, error_for_body, classify_payload, error_for_status, new_chat_id
from tests.helpers import FIXTURES

EVENTS = [{"a": 1}, {"text": "известни\u2028 ünï 😀"}, {"b": [1, 2]}]


def _frame(line_ending: str) -> bytes:
    text = "".join(f": keep-alive{line_ending}data: {json.dumps(e, ensure_ascii=False)}{line_ending}{line_ending}"
                   for e in EVENTS)
    return text.encode()


def _decode(chunks) -> list:
    return [json.loads(d) for d in SSEDecoder().iter_payloads(chunks)]


@pytest.mark.parametrize("line_ending", ["\n", "\r", "\r\n"])
def test_every_split_point(line_ending):
    frame = _frame(line_ending)
    for cut in range(len(frame) + 1):
        assert _decode([frame[:cut], frame[cut:]]) == EVENTS, cut


@pytest.mark.parametrize("line_ending", ["\n", "\r\n"])
def test_byte_by_byte(line_ending):
    frame = _frame(line_ending)
    assert _decode([frame[i:i + 1] for i in range(len(frame))]) == EVENTS


def test_many_events_in_one_read():
    frame = b"".join(f"data: {{\"n\": {i}}}\n\n".encode() for i in range(2000))
    assert [e["n"] for e in _decode([frame])] == list(range(2000))


def test_unterminated_last_event_and_multiline_data():
    assert _decode([b"data: {\"a\":\ndata: 1}\n\ndata: {\"z\": 2}"]) == [{"a": 1}, {"z": 2}]


def test_other_fields_ignored_and_html_kept_as_stray():
    decoder = SSEDecoder()
    assert decoder.feed(b"event: x\nid: 3\nretry: 5\n<!doctypehtml><html>aliyun_waf_aa\n") == []
    assert decoder.finish() == [] and b"aliyun_waf_aa" in decoder.stray


# ----------------------------------------------------------------- classification


def _x5sec():
    return json.loads((FIXTURES / "completions-x5sec-rgv587.json").read_text())


def _inspection():
    line = (FIXTURES / "stream-error-data-inspection-failed.sse").read_text().strip()
    return json.loads(line[len("data:"):])


@pytest.mark.parametrize(("payload", "cls", "status", "code"), [
    (_x5sec(), errors.RateLimited, 429, "upstream_challenge"),
    (_inspection(), errors.ContentFiltered, 400, "content_policy_violation"),
    ({"error": "Internal error!"}, errors.UpstreamError, 502, "upstream_error"),
    ({"error": {"code": "invalid_input", "details": "bad"}}, errors.InvalidRequest, 400, "upstream_invalid_input"),
    ({"error": {"code": "quota_limit", "detail": "used up"}}, errors.RateLimited, 429, "upstream_rate_limited"),
    ({"error": {"error_code": "data_inspection_failed"}}, errors.ContentFiltered, 400, "content_policy_violation"),
    ({"success": False, "data": {"code": "Bad_Request", "details": "Internal error..."}},
     errors.UpstreamError, 502, "upstream_bad_request"),
    ({"success": False, "data": {"code": "unauthorized", "details": "Token has expired, please log in again."}},
     errors.UpstreamAuthError, 502, "upstream_unauthorized"),
    ({"success": False, "data": {"code": "RateLimited", "details": "额度", "num": 3}},
     errors.RateLimited, 429, "upstream_rate_limited"),
    ({"success": False, "code": "Bad_Request", "details": "top level"}, errors.UpstreamError, 502, "upstream_bad_request"),
    ({"success": False, "data": {"code": "Not_Found", "details": "CHAT_NOT_FOUND"}},
     errors.ChatNotFound, 502, "upstream_not_found"),
    ({"code": "FAIL_SYS_USER_VALIDATE"}, errors.RateLimited, 429, "upstream_challenge"),
    ({"choices": [{"delta": {"status": "error", "extra": {"error": {"code": "internal_error", "details": "x"}}}}]},
     errors.UpstreamError, 502, "upstream_internal_error"),
])
def test_classify_payload(payload, cls, status, code):
    error = classify_payload(payload)
    assert type(error) is cls and error.status == status and error.code == code
    assert error.message and "{" not in error.message[:20]


def test_rate_limit_hours_become_retry_after():
    error = classify_payload({"success": False, "data": {"code": "RateLimited", "details": "x", "num": 3}})
    assert error.retry_after == 3 * 3600 and error.headers()["Retry-After"] == "10800"
    assert "3 hour" in error.message


@pytest.mark.parametrize("payload", [
    {"choices": [{"delta": {"content": "hi", "phase": "answer"}}]},
    {"response.created": {"response_id": "r"}},
    {"success": True, "data": {"id": "x"}},
])
def test_normal_events_are_not_errors(payload):
    assert classify_payload(payload) is None


def test_expired_token_fixture_inner_envelope():
    # The capture wraps the site's answer in the reporting tool's envelope; the inner object is the site's.
    inner = {"success": False, "request_id": "cbf6", "data": {"code": "unauthorized",
                                                              "details": "Token has expired, please log in again."}}
    assert "Token has expired" in (FIXTURES / "chats-new-token-expired.txt").read_text()
    assert isinstance(classify_payload(inner), errors.UpstreamAuthError)


@pytest.mark.parametrize(("status", "body", "cls"), [
    (401, "", errors.UpstreamAuthError),
    (403, "<!doctypehtml><meta name=aliyun_waf_aa>", errors.RateLimited),
    (429, "{}", errors.RateLimited),
    (500, "oops", errors.UpstreamError),
    (503, "Service Unavailable", errors.ServiceUnavailable),
    (504, "", errors.UpstreamTimeout),
])
def test_error_for_status(status, body, cls):
    assert type(error_for_status(status, body)) is cls


def test_html_pages_never_leak_into_messages():
    page = (FIXTURES / "signin-v1-405-page.partial.html").read_bytes()
    error = error_for_body(405, "text/html", page, None)
    assert isinstance(error, errors.UpstreamError) and "<" not in error.message


def test_waf_page_with_200_is_a_challenge():
    error = error_for_body(200, "text/html", b"<!doctypehtml><html><meta name=\"aliyun_waf_aa\">", None)
    assert isinstance(error, errors.RateLimited) and error.retry_after >= 120


@pytest.mark.parametrize(("answer", "chat_id"), [
    ({"success": True, "data": {"id": "c1"}}, "c1"),
    ({"success": True, "data": {"chat_id": "c2"}}, "c2"),
    ({"success": True, "data": {"chat": {"id": "c3"}}}, "c3"),
    ({"success": True, "data": {"chat": {"chat_id": "c4"}}}, "c4"),
    ({"chat_id": "c5"}, "c5"),
    ({"success": True, "data": {}}, None),
    ({"success": True, "data": {"id": ""}}, None),
])
def test_chat_id_wherever_the_site_puts_it(answer, chat_id):
    assert new_chat_id(answer) == chat_id


@pytest.mark.parametrize("data", [b"1", b"[1, 2]", b'"text"', b"null"])
def test_events_that_are_not_objects_are_skipped(data):
    assert decode_event(data) is None


def test_unreadable_events_say_what_they_were():
    with pytest.raises(errors.UpstreamError, match="unreadable"):
        decode_event(b"{not json")
    with pytest.raises(errors.RateLimited):
        decode_event(b"<html><body>aliyun_waf_aa</body></html>")


# ----------------------------------------------------------------- the size rule counts bytes (§11, §14)

def _body_of(char: str, size: int) -> bytes:
    """A turn-like body of exactly ``size`` bytes as sent, padded with ``char`` (ASCII to fill the rest)."""
    room = size - len(encode_body({"messages": [{"content": ""}]}))
    unit = len(char.encode())
    body = encode_body({"messages": [{"content": char * (room // unit) + "a" * (room % unit)}]})
    assert len(body) == size
    return body


@pytest.mark.parametrize(("char", "bytes_each"), [("a", 1), ("é", 2), ("长", 3), ("😀", 4)])
@pytest.mark.parametrize(("size", "fits"), [(114_687, True), (114_688, True), (114_689, False), (131_072, False)])
def test_the_turn_limit_counts_utf8_bytes_of_the_body(char, bytes_each, size, fits):
    body = _body_of(char, size)
    assert len(char.encode()) == bytes_each
    assert TurnLimit(114_688).fits(body) is fits


@pytest.mark.parametrize(("char", "count", "fits"), [
    ("a", 44_000, True),      # 44 KB
    ("长", 38_000, True),     # 114 KB: under 112 KiB
    ("长", 44_000, False),    # ~132 KB: R1#147's refused paste
    ("😀", 28_000, True),     # 112 KB
    ("😀", 29_000, False),    # 116 KB
])
def test_same_characters_different_bytes(char, count, fits):
    body = encode_body({"messages": [{"content": char * count}]})
    assert TurnLimit(114_688).fits(body) is fits


def test_json_escapes_count_as_sent():
    body = encode_body({"content": 'a"\\\n' * 10})  # each of these 4 characters is 7 bytes on the wire
    assert len(body) == len('{"content":""}') + 70


def test_the_deprecated_character_cap_still_applies_when_set():
    body = encode_body({"content": "a" * 1000})
    assert TurnLimit(10_000).fits(body) and not TurnLimit(10_000, max_chars=500).fits(body)
    assert "MAX_TURN_CHARS" in TurnLimit(10_000, max_chars=500).refusal(body).message
    assert "MAX_TURN_BYTES" in TurnLimit(500).refusal(body).message


def test_the_default_limit_keeps_a_margin_under_the_captcha():
    assert Settings.MAX_TURN_BYTES <= 0.9 * SIZE_CAPTCHA_BYTES < SIZE_CAPTCHA_BYTES <= 128 * 1024
