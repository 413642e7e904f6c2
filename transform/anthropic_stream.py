"""The answer side of the Anthropic Messages API: the turn's OpenAI chunks as Messages events, and errors.

The chat turn (``routes.turns``) produces OpenAI ``chat.completion.chunk``
objects whichever API asked; ``EventTranslator`` turns them into the event
sequence the ``anthropic`` SDK's accumulator expects::

    message_start, (content_block_start, content_block_delta*, content_block_stop)*, message_delta, message_stop

with ``thinking`` blocks (``thinking_delta``, then a ``signature_delta``),
``text`` blocks (``text_delta``, cut at the first stop sequence) and
``tool_use`` blocks (``input_json_delta``); the site's search sources become
``citations_delta`` on the text. A non-stream answer is the same
events folded by ``accumulate``, so both forms always agree. ``error_body`` gives
every ``ProxyError`` the Messages API's error shape (its retry headers are the
error's own, the one rule in ``errors``).

Pure: no I/O; ids are passed in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson


#: OpenAI finish_reason → Messages stop_reason.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
#: Our status → the Messages API's error type (any other 4xx: invalid_request_error; 5xx: api_error).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               503: "overloaded_error", 529: "overloaded_error"}
SIGNATURE_PREFIX = "qwen2openai-"


# --------------------------------------------------------------------------- errors


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def error_body(status: int, message: str) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``, in plain answers and as a stream's ``error`` event."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


# --------------------------------------------------------------------------- stop sequences


class StopScanner:
    """Finds the first stop sequence in streamed text; holds back only what may be the start of one.

    Each ``feed`` looks at the held tail plus the new piece, so the whole scan is
    linear in the text for a given set of sequences.
    """

    def __init__(self, sequences: Sequence[str]) -> None:
        self.sequences = tuple(s for s in sequences if s)
        self._hold = max((len(s) for s in self.sequences), default=1) - 1
        self._firsts = frozenset(s[0] for s in self.sequences)
        self._buf = ""
        self.found: str | None = None

    def feed(self, text: str) -> str:
        """Text safe to send; after a stop sequence, nothing more."""
        if self.found is not None:
            return ""
        if not self.sequences:
            return text
        buf = self._buf + text
        hits = [(at, s) for s in self.sequences if (at := buf.find(s)) >= 0]
        if hits:
            at, self.found = min(hits)
            self._buf = ""
            return buf[:at]
        keep = self._tail(buf)
        self._buf = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep]

    def _tail(self, buf: str) -> int:
        """Length of the end of ``buf`` to hold: from the first character there that starts a sequence.

        A superset of the true prefixes, found with C-speed ``find``, so text
        flows on unless a sequence's first character is near the end.
        """
        start = max(0, len(buf) - self._hold)
        found = [at for c in self._firsts if (at := buf.find(c, start)) >= 0]
        return len(buf) - min(found) if found else 0

    def flush(self) -> str:
        held, self._buf = self._buf, ""
        return "" if self.found is not None else held


# --------------------------------------------------------------------------- events


def usage_of(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """Messages usage from an OpenAI usage object (cache reads are not input tokens there)."""
    usage = usage or {}
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0)
    return {
        "input_tokens": max(0, int(usage.get("prompt_tokens", 0) or 0) - cached),
        "output_tokens": int(usage.get("completion_tokens", 0) or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def signature(thinking: str) -> str:
    """An opaque ``signature`` for a thinking block; clients store and send it back, nothing checks it."""
    return SIGNATURE_PREFIX + hashlib.sha256(thinking.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def citation(annotation: Mapping[str, Any]) -> dict[str, Any]:
    """A search source (an OpenAI ``url_citation``) as a web search citation of a text block."""
    cited = annotation.get("url_citation") or {}
    return {"type": "web_search_result_location", "url": cited.get("url", ""), "title": cited.get("title") or None,
            "encrypted_index": "", "cited_text": ""}


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


class PrefixTrimmer:
    """Takes ``prefix`` off the start of streamed text if the text starts with it (leading whitespace aside).

    Each piece is compared once against the part of the prefix it may repeat,
    so the scan is linear however long the prefix or the leading whitespace.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.strip()
        self.done = not self.prefix
        self._held: list[str] = []  # everything seen while undecided
        self._matched = 0  # characters of the prefix repeated so far
        self._started = False  # past the leading whitespace

    def feed(self, text: str) -> str:
        if self.done:
            return text
        self._held.append(text)
        if not self._started:
            stripped = text.lstrip()
            if not stripped:
                return ""
            text, self._started = stripped, True
        size = min(len(text), len(self.prefix) - self._matched)
        if text[:size] != self.prefix[self._matched:self._matched + size]:
            return self.flush()  # not a repeat: everything held goes out as it was
        self._matched += size
        if self._matched < len(self.prefix):
            return ""
        self.done, self._held = True, []
        return text[size:]

    def flush(self) -> str:
        held, self._held, self.done = "".join(self._held), [], True
        return held


class EventTranslator:
    """OpenAI chunks of one turn → Messages stream events.

    ``start()`` gives ``message_start``; ``feed(chunk)`` the events of one chunk;
    ``finish()`` closes the open block and gives ``message_delta`` and
    ``message_stop``. Once a stop sequence is found ``stopped`` is true: the
    caller reads no more of the turn and calls ``finish()``.
    """

    def __init__(self, message_id: str, model: str, stop_sequences: Sequence[str] = (),
                 input_tokens: int = 0, show_thinking: bool = True, prefill: str = "") -> None:
        self.id, self.model, self.input_tokens = message_id, model, input_tokens
        self._prefill = PrefixTrimmer(prefill)
        self.show_thinking = show_thinking  # off: thinking nobody asked for is left out, as Anthropic's API does
        self._stops = StopScanner(stop_sequences)
        self._open: str | None = None  # type of the block being written
        self._index = -1
        self._thinking: list[str] = []
        self._calls: dict[int, int] = {}  # OpenAI tool_calls index → our block index
        self._finish_reason: str | None = None
        self._usage: Mapping[str, Any] | None = None
        self._written = 0  # characters sent: output tokens are estimated from them when the site's count is cut off

    @property
    def stopped(self) -> bool:
        return self._stops.found is not None

    def start(self) -> list[dict[str, Any]]:
        message = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }
        return [{"type": "message_start", "message": message}]

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices or self.stopped:
            return []
        choice = choices[0]
        self._finish_reason = choice.get("finish_reason") or self._finish_reason
        delta = choice.get("delta") or {}
        out: list[dict[str, Any]] = []
        if delta.get("reasoning_content") and self.show_thinking:
            out += self._thinking_delta(delta["reasoning_content"])
        if delta.get("content"):
            out += self._text(self._stops.feed(self._prefill.feed(delta["content"])))
        for call in delta.get("tool_calls") or ():
            out += self._tool_call(call)
        if delta.get("annotations") and self._open == "text":
            out += [self._delta({"type": "citations_delta", "citation": citation(a)}) for a in delta["annotations"]]
        return out

    def _thinking_delta(self, text: str) -> list[dict[str, Any]]:
        out = self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        self._thinking.append(text)
        self._written += len(text)
        return out + [self._delta({"type": "thinking_delta", "thinking": text})]

    def _text(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        out = self._begin("text", {"type": "text", "text": ""})
        self._written += len(text)
        return out + [self._delta({"type": "text_delta", "text": text})]

    def _tool_call(self, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        position = call.get("index", 0)
        fn = call.get("function") or {}
        if call.get("id"):
            out += self._close()
            out += self._begin("tool_use", {"type": "tool_use", "id": tool_use_id(call["id"]),
                                            "name": fn.get("name", ""), "input": {}})
            self._calls[position] = self._index
        arguments = fn.get("arguments")
        if arguments and self._calls.get(position) == self._index and self._open == "tool_use":
            out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return out

    def _begin(self, kind: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        """Open a block of ``kind`` unless one is open already (a tool call always opens its own)."""
        if self._open == kind and kind != "tool_use":
            return []
        out = self._close()
        self._index += 1
        self._open = kind
        return out + [{"type": "content_block_start", "index": self._index, "content_block": block}]

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        out = []
        if self._open == "thinking":
            out.append(self._delta({"type": "signature_delta", "signature": signature("".join(self._thinking))}))
            self._thinking = []
        self._open = None
        return out + [{"type": "content_block_stop", "index": self._index}]

    def finish(self) -> list[dict[str, Any]]:
        held = "" if self.stopped else self._stops.feed(self._prefill.flush())
        out = self._text(held + self._stops.flush()) + self._close()
        if self.stopped:
            reason, sequence = "stop_sequence", self._stops.found
        else:
            reason, sequence = STOP_REASONS.get(self._finish_reason or "stop", "end_turn"), None
        usage = usage_of(self._usage) if self._usage else {
            "input_tokens": self.input_tokens, "output_tokens": -(-self._written // 4)}
        out.append({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": usage})
        out.append({"type": "message_stop"})
        return out


# --------------------------------------------------------------------------- whole messages


#: Deltas that extend their block, and the field that carries the piece.
_PIECES = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


def accumulate(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The message a stream of events adds up to, as the SDK's accumulator builds it (non-stream answers).

    Pieces are joined once per block (at its stop), so a long answer costs linear time.
    """
    message: dict[str, Any] = {}
    pieces: dict[int, list[str]] = {}
    for event in events:
        kind = event["type"]
        if kind == "message_start":
            message = json.loads(json.dumps(event["message"]))
        elif kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            block, delta = message["content"][event["index"]], event["delta"]
            if delta["type"] in _PIECES:
                pieces.setdefault(event["index"], []).append(delta[_PIECES[delta["type"]]])
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "citations_delta":
                block.setdefault("citations", []).append(delta["citation"])
        elif kind == "content_block_stop":
            _settle(message["content"][event["index"]], "".join(pieces.pop(event["index"], [])))
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"] = {**message["usage"], **event["usage"]}
    return message


def _settle(block: dict[str, Any], joined: str) -> None:
    """A block's deltas, joined, into its field (tool input parsed as JSON)."""
    if block["type"] == "tool_use":
        block["input"] = json.loads(joined) if joined.strip() else {}
    elif block["type"] in ("text", "thinking"):
        block[block["type"]] += joined


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One SSE event as the Messages API frames it: ``event: <type>`` then the JSON ``data``."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
