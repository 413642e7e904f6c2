"""Every scan of text a client or the site controls runs in linear time, on 200 KB of hostile text.

Each scanner gets each adversarial string (runs of spaces, ``<``, ``{``, quotes,
backslashes, unclosed tags, repeated tag prefixes, ...), whole and, for the
streaming ones, in small deltas. A linear scan of 200 KB takes milliseconds;
a quadratic one takes minutes, so the bound below separates them without being
a timing test, and the per-test timeout keeps a regression from hanging the suite.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from app import RedactingFilter
from errors import ProxyError
from qwen_client import conversations, wire
from transform import generation, json_schema, media_parts, openai_chat, tool_prompts, tool_replies
from transform.answer import TextAccumulator, url_citations

SIZE = 200_000
BOUND = 2.0  # seconds; linear code takes well under 0.2 s here


def _fill(unit: str, head: str = "", tail: str = "") -> str:
    return head + unit * ((SIZE - len(head) - len(tail)) // len(unit)) + tail


HOSTILE = {
    "spaces": _fill(" ", "a", "b"),  # the reported request
    "spaces-then-tag-prefix": _fill(" ", "a", "/thin"),
    "newlines": _fill("\n", "a", "b"),
    "tabs-and-newlines": _fill(" \t\n"),
    "lt": _fill("<"),
    "braces": _fill("{"),
    "brackets": _fill("["),
    "brace-pairs": _fill("[]"),
    "quotes": _fill('"'),
    "single-quotes": _fill("'"),
    "backslashes": _fill("\\"),
    "backticks": _fill("`"),
    "fences": _fill("```"),
    "fence-then-spaces": _fill(" ", "```json"),
    "open-tag-prefixes": _fill("<tool_call"),
    "open-tags": _fill("<tool_call>"),
    "open-tags-spaced": _fill("<tool_call> \n"),
    "close-tags": _fill("</tool_call>"),
    "think-tags": _fill("<think>"),
    "slash-think": _fill(" /think"),
    "jwt-starts": _fill("eyJ"),
    "jwt-halves": _fill("eyJabcd."),
    "bearer": _fill(" ", "Bearer"),
    "bearers": _fill("bearer "),
    "token-eq": _fill("token="),
    "markdown-image-starts": _fill("!["),
    "markdown-image-urls": _fill("![a](http://x"),
    "urls": _fill("http://"),
    "citations": _fill("[[1"),
    "json-keys": _fill('{"a":'),
    "bare-words": _fill("a "),
    "commas-in-brackets": _fill(" ", "[1,", "]" * 1000),
    "digits": _fill("1"),
    "words": _fill("a"),
}


def _call_scanner(text: str, step: int) -> None:
    scanner = tool_replies.CallScanner()
    for i in range(0, len(text), step):
        scanner.feed(text[i:i + step])
    scanner.finish()


SPEC = tool_prompts.parse_agent_spec({"tools": [{"type": "function", "function": {
    "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}]})


def _sse(text: str, step: int) -> None:
    decoder = wire.SSEDecoder()
    data = ("data: " + text).encode()
    for i in range(0, len(data), step):
        decoder.feed(data[i:i + step])
    decoder.finish()


def _accumulate(text: str, step: int) -> None:
    answer = TextAccumulator()
    for i in range(0, len(text), step):
        answer.feed(text[i:i + step])
    assert answer.text == text


def _chat_request(text: str) -> None:
    try:
        openai_chat.parse_chat_request({"model": "m", "messages": [
            {"role": "system", "content": text}, {"role": "user", "content": text}]})
    except ProxyError:
        pass


def _redact(text: str) -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "body %s", (text,), None)
    RedactingFilter(["sk-secret-1234"]).filter(record)


def _quietly(scan: Callable[[str], Any]) -> Callable[[str], Any]:
    def run(text: str) -> None:
        try:
            scan(text)
        except (ValueError, ProxyError):
            pass  # refusing hostile text is fine; taking long over it is not
    return run


SCANNERS: dict[str, Callable[[str], Any]] = {
    "parse_chat_request": _chat_request,
    "history_keys": lambda t: conversations.history_keys([("user", t), ("assistant", t)], "seed"),
    "redacting_filter": _redact,
    "call_scanner_whole": lambda t: _call_scanner(t, SIZE),
    "call_scanner_deltas": lambda t: _call_scanner(t, 7),
    "parse_calls": lambda t: tool_replies.parse_calls([t], SPEC),
    "bare_calls": lambda t: tool_replies.bare_calls(t, SPEC),
    "json_candidates": lambda t: list(json_schema.json_candidates(t)),
    "extract_json": _quietly(json_schema.extract_json),
    "loads_lenient": _quietly(json_schema.loads_lenient),
    "coerce": lambda t: json_schema.coerce(t, {"type": ["integer", "number", "object"]}),
    "history_images": lambda t: generation.history_images([("assistant", t)]),
    "event_image_urls": lambda t: generation.delta_image_urls({"phase": "image_gen", "content": t}),
    "task_state": _quietly(lambda t: generation.task_state({"data": {"content": t}})),
    "size_to_ratio": _quietly(lambda t: generation.size_to_ratio(t, "t2v")),
    "url_citations": lambda t: url_citations(t, [{"url": "https://a.example", "title": "a"}]),
    "sse_decoder_deltas": lambda t: _sse(t, 16),
    "answer_deltas": lambda t: _accumulate(t, 1),  # the site sends a token or less per event
    "waf_and_shorten": lambda t: (wire.looks_like_waf(t), wire.shorten(t)),
    "error_for_body": lambda t: wire.error_for_body(502, "text/html", t.encode(), None),
    "oss_error": lambda t: wire.oss_error(403, t),
    "safe_filename": media_parts.safe_filename,
    "split_content": _quietly(lambda t: media_parts.split_content(
        [{"type": "text", "text": t}, {"type": "image_url", "image_url": {"url": t}}], "content")),
    "decode_inline": _quietly(lambda t: media_parts.decode_inline(
        media_parts.MediaPart("image", "p", "data:image/png;base64," + t, mime="image/png"))),
    "fold_assistant": lambda t: tool_prompts.fold_assistant(t, [{"function": {"name": t, "arguments": t}}]),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scanner", sorted(SCANNERS))
def test_scanner_is_linear_on_hostile_text(scanner: str) -> None:
    scan = SCANNERS[scanner]
    slow = {}
    for name, text in HOSTILE.items():
        started = time.perf_counter()
        scan(text)
        took = time.perf_counter() - started
        if took > BOUND:
            slow[name] = round(took, 1)
    assert not slow, f"{scanner} is not linear on 200 KB of: {slow}"
