"""The site's answer events → OpenAI chat chunks, as they stream (§6).

Pure like ``transform.openai_chat`` (the request side): no I/O, ids and timestamps passed
in. This is the relay's hot path, one ``feed`` per upstream event, so it is
kept lean and measured by ``bench/hot_path.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any


class TextAccumulator:
    """Turns answer deltas into increments whether the site sent increments or snapshots (§6.4).

    The site is measured to send increments, but a source reports cumulative
    snapshots, so the mode is decided from the stream itself, once: a delta
    that does not strictly extend the text so far proves increments. A delta
    that does extend it proves snapshots only when the text so far is long
    enough not to be a coincidence; while it is short ("1" then "1."), that
    delta is held until the next one decides, so no text is ever dropped or
    doubled by a guess.
    """

    #: Text so far at least this long, strictly extended by the next delta, means snapshots.
    SURE_PREFIX = 8

    def __init__(self) -> None:
        self._pieces: list[str] = []  # joined on demand: ``str +=`` on an attribute copies the whole answer
        self.size = 0
        self._mode: str | None = None  # "incremental" | "cumulative" once decided
        self._held: str | None = None

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    @property
    def pending(self) -> bool:
        return self._held is not None

    def feed(self, chunk: str) -> str:
        """The new text in ``chunk`` (may be empty while a delta is held)."""
        if not chunk:
            return ""
        if self._mode == "incremental" or (self._mode is None and not self.size):
            return self._emit(chunk)
        if self._mode == "cumulative":
            if chunk.startswith(self.text):
                return self._emit(chunk[len(self.text):])
            if self.text.startswith(chunk):
                return ""  # a repeated, shorter snapshot
            self._mode = "incremental"
            return self._emit(chunk)
        return self._decide(chunk)

    def _decide(self, chunk: str) -> str:
        held, self._held = self._held, None
        if held is not None:
            if len(chunk) > len(held) and chunk.startswith(held):
                self._mode = "cumulative"
                return self._emit(chunk[len(self.text):])
            self._mode = "incremental"
            return self._emit(held + chunk)
        if len(chunk) > len(self.text) and chunk.startswith(self.text):
            if len(self.text) >= self.SURE_PREFIX:
                self._mode = "cumulative"
                return self._emit(chunk[len(self.text):])
            self._held = chunk
            return ""
        self._mode = "incremental"
        return self._emit(chunk)

    def flush(self) -> str:
        """End of the phase: a delta still in doubt is taken as an increment, the measured mode."""
        held, self._held = self._held, None
        return self._emit(held) if held else ""

    def _emit(self, piece: str) -> str:
        if piece:
            self._pieces.append(piece)
            self.size += len(piece)
        return piece


class SnapshotDiffer:
    """Increments from cumulative snapshots, as ``thinking_summary`` arrays arrive (§6.3).

    Each snapshot is compared with the previous one: what extends it is new
    text. If the site ever rewrites the summary instead of extending it, what
    differs from the common start is sent as new text rather than lost.
    """

    def __init__(self) -> None:
        self.text = ""  # everything emitted (each snapshot is whole anyway: nothing to gain from pieces)
        self._last = ""

    @property
    def size(self) -> int:
        return len(self.text)

    def feed(self, snapshot: str) -> str:
        last, self._last = self._last, snapshot
        if snapshot.startswith(last):
            piece = snapshot[len(last):]
        elif last.startswith(snapshot):
            piece = ""  # a shorter repeat
        else:
            piece = snapshot[len(os.path.commonprefix([last, snapshot])):]
        self.text += piece
        return piece


def openai_usage(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """OpenAI usage from the site's cumulative usage object (either naming scheme, §6.3)."""
    usage = usage or {}
    prompt = int(usage.get("input_tokens", usage.get("prompt_tokens", 0)) or 0)
    completion = int(usage.get("output_tokens", usage.get("completion_tokens", 0)) or 0)
    out_details = usage.get("output_tokens_details") or usage.get("completion_tokens_details") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
        "prompt_tokens_details": {"cached_tokens": int(cached or 0)},
        "completion_tokens_details": {"reasoning_tokens": int(out_details.get("reasoning_tokens", 0) or 0)},
    }


_CITATION = re.compile(r"\[\[(\d+)\]\]")


def url_citations(content: str, sources: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``url_citation`` annotations for the ``[[n]]`` markers the site puts in answers.

    Sources the text never cites are listed with an empty span, so a client can
    still show where the answer came from.
    """
    annotations, cited = [], set()
    for match in _CITATION.finditer(content):
        n = int(match.group(1))
        if 1 <= n <= len(sources):
            cited.add(n)
            annotations.append(_citation(sources[n - 1], match.start(), match.end()))
    annotations += [_citation(s, 0, 0) for n, s in enumerate(sources, 1) if n not in cited]
    return annotations


def _citation(source: Mapping[str, Any], start: int, end: int) -> dict[str, Any]:
    return {
        "type": "url_citation",
        "url_citation": {
            "url": source.get("url", ""), "title": source.get("title") or source.get("hostname") or "",
            "start_index": start, "end_index": end,
        },
    }


class StreamTranslator:
    """Turns the site's stream events into OpenAI ``chat.completion.chunk`` objects (§6).

    Feed it decoded events in order; it keeps the whole answer, thinking, usage
    and sources, so a non-stream answer is the same translator's ``completion()``.
    Error events are the client's business (``qwen_client.wire`` classifies them, ``qwen_client.client`` raises).
    """

    def __init__(
        self, completion_id: str, model: str, created: int, include_usage: bool = False, max_tokens: int | None = None
    ) -> None:
        self.id, self.model, self.created, self.include_usage = completion_id, model, created, include_usage
        self.max_tokens = max_tokens
        self.truncated = False
        self.answer = TextAccumulator()
        self.reasoning = TextAccumulator()
        self.summary = SnapshotDiffer()
        self.usage: Mapping[str, Any] | None = None
        self.sources: dict[str, Mapping[str, Any]] = {}
        #: The answer followed: the first ``response.created`` seen (index 0); the next turn's ``parent_id``.
        self.response_id: str | None = None
        #: Another candidate answer streams alongside the followed one (§14): its deltas are dropped.
        self.rivals = False
        self.finished = False
        self._sent_role = False

    @property
    def has_output(self) -> bool:
        """Anything at all for the client: thinking or an answer (subclasses widen ``has_answer``)."""
        return self.has_answer or bool(self.reasoning.size or self.summary.size or self.reasoning.pending)

    @property
    def has_answer(self) -> bool:
        """Whether the turn produced an answer (thinking alone is not one)."""
        return bool(self.answer.size or self.answer.pending)

    @property
    def reasoning_text(self) -> str:
        return self.reasoning.text + self.summary.text

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Chunks to send for one upstream event (often none).

        When the site streams two candidate answers at once (§14), only the
        first one's events count: a delta tagged with another ``response_id``
        is dropped whole (text, thinking, sources, usage); an untagged one is
        taken as the followed answer's.
        """
        # Events are decoded JSON, so plain dict checks (much cheaper than Mapping) are exact.
        choices = event.get("choices")
        if "response.created" in event or event.get("type") == "response.created":
            self._on_created(event)
            return []
        if self.rivals and event.get("response_id", self.response_id) != self.response_id:
            return []
        usage = event.get("usage")
        if usage and isinstance(usage, dict):
            self.usage = usage
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return []
        delta = choices[0].get("delta")
        return self._on_delta(delta) if isinstance(delta, dict) else []

    def _on_created(self, event: Mapping[str, Any]) -> None:
        created = event.get("response.created")
        if isinstance(event.get("response"), dict):
            created = {"response_id": event["response"].get("id")}  # another observed form (§6.3)
        response_id = created.get("response_id") if isinstance(created, dict) else None
        if not response_id:
            return
        if self.response_id is None:
            self.response_id = response_id
        elif response_id != self.response_id:
            self.rivals = True

    def _on_delta(self, delta: Mapping[str, Any]) -> list[dict[str, Any]]:
        phase, content = delta.get("phase"), delta.get("content")
        extra = delta.get("extra")
        extra = extra if isinstance(extra, dict) else {}
        for source in extra.get("web_search_info") or ():
            if isinstance(source, dict) and source.get("url"):
                self.sources.setdefault(source["url"], source)
        text = content if isinstance(content, str) else ""
        out: dict[str, str] = {}
        if phase in (None, "answer"):
            if self.reasoning.pending:
                out["reasoning_content"] = self.reasoning.flush()
            out["content"] = self.answer.feed(text)
            self.finished = self.finished or (phase == "answer" and delta.get("status") == "finished")
            if self.max_tokens and not self.finished and self._answer_tokens() >= self.max_tokens:
                self.finished = self.truncated = True
        elif phase == "think":
            out["reasoning_content"] = self.reasoning.feed(text)
        elif phase == "thinking_summary":
            thoughts = (extra.get("summary_thought") or {}).get("content")
            if isinstance(thoughts, list):
                out["reasoning_content"] = self.summary.feed("\n\n".join(str(t) for t in thoughts))
        return [self._chunk(out)] if any(out.values()) else []

    def _answer_tokens(self) -> int:
        """Answer tokens so far, from the site's cumulative usage (output minus reasoning)."""
        usage = openai_usage(self.usage)
        return usage["completion_tokens"] - usage["completion_tokens_details"]["reasoning_tokens"]

    @property
    def finish_reason(self) -> str:
        return "length" if self.truncated else "stop"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if not self._sent_role:
            delta = {"role": "assistant", **delta}
            self._sent_role = True
        return {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def annotations(self) -> list[dict[str, Any]]:
        return url_citations(self.answer.text, list(self.sources.values()))

    def finish(self) -> list[dict[str, Any]]:
        """The closing chunks: ``finish_reason``, then usage if the client asked for it."""
        held = {"reasoning_content": self.reasoning.flush(), "content": self.answer.flush()}
        chunks = [self._chunk({k: v for k, v in held.items() if v})] if any(held.values()) else []
        delta: dict[str, Any] = {}
        if self.sources:
            delta["annotations"] = self.annotations()
        chunks.append(self._chunk(delta, finish_reason=self.finish_reason))
        if self.include_usage:
            chunks.append({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": openai_usage(self.usage),
            })
        return chunks

    def completion(self) -> dict[str, Any]:
        """The whole answer as one ``chat.completion`` (non-stream requests, after ``finish``)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.answer.text}
        if self.reasoning_text:
            message["reasoning_content"] = self.reasoning_text
        if self.sources:
            message["annotations"] = self.annotations()
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": openai_usage(self.usage),
        }
