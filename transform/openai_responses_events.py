"""The answer side of the OpenAI Responses API: the turn's chat chunks → Responses output items and stream events.

The turn produces the same ``chat.completion.chunk`` objects the chat endpoint
streams (thinking in ``reasoning_content``, text in ``content``, emulated calls
as ``tool_calls`` fragments, citations as ``annotations`` on the closing chunk,
usage in a ``choices: []`` chunk). :class:`ResponseEvents` turns them into the
documented event sequence the ``openai`` SDK's stream helper and Codex CLI
accumulate: ``response.created``, ``response.in_progress``, then per output
item ``response.output_item.added`` … ``response.output_item.done`` (a
``reasoning`` item with a summary, a ``message`` with one ``output_text`` part,
``function_call`` items), and ``response.completed`` (``response.incomplete``
when ``max_output_tokens`` cut the answer, ``response.failed`` when the turn
failed). Every event has a ``sequence_number``; a non-stream answer is the same
object's ``response()``. Pure: ids and the timestamp are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def responses_usage(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """The chat usage object (``transform.answer.openai_usage``) in the Responses API's names."""
    usage = usage or {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int((usage.get("prompt_tokens_details") or {})
                                                      .get("cached_tokens") or 0)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int((usage.get("completion_tokens_details") or {})
                                                          .get("reasoning_tokens") or 0)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def url_annotation(annotation: Mapping[str, Any]) -> dict[str, Any] | None:
    """A chat ``url_citation`` annotation (nested) as a Responses one (flat)."""
    cited = annotation.get("url_citation") if annotation.get("type") == "url_citation" else None
    if not isinstance(cited, Mapping):
        return None
    return {"type": "url_citation", "url": cited.get("url", ""), "title": cited.get("title", ""),
            "start_index": cited.get("start_index", 0), "end_index": cited.get("end_index", 0)}


class ResponseEvents:
    """One response: its output items as they grow, and the stream events that build them.

    ``start()`` opens the stream, ``feed(chunk)`` takes each chat chunk of the
    turn, ``finish()`` closes it well and ``fail(error)`` badly; each returns the
    events to send. ``response()`` is the response object at any point.
    """

    def __init__(self, response_id: str, created_at: int, echo: Mapping[str, Any],
                 new_id: Callable[[str], str]) -> None:
        self.id, self.created_at, self.echo, self._new_id = response_id, created_at, dict(echo), new_id
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.status = "in_progress"
        self.error: dict[str, Any] | None = None
        self.truncated = False
        self._open: dict[str, Any] | None = None  # the item still growing
        self._seq = 0

    # ------------------------------------------------------------------ the object

    def response(self) -> dict[str, Any]:
        """The response object as the API shapes it (``output`` as far as it has grown)."""
        body: dict[str, Any] = {"id": self.id, "object": "response", "created_at": self.created_at,
                                "status": self.status, "error": self.error,
                                "incomplete_details": {"reason": "max_output_tokens"} if self.truncated else None}
        body.update(self.echo)
        body["output"] = [dict(item) for item in self.output]
        body["usage"] = responses_usage(self.usage) if self.usage is not None else None
        return body

    @property
    def text(self) -> str:
        """The answer text of every message item."""
        return "".join(part["text"] for item in self.output if item["type"] == "message" for part in item["content"])

    def calls(self) -> list[dict[str, Any]]:
        """The function calls in the chat API's ``tool_calls`` shape (how history folds them)."""
        return [{"id": item["call_id"], "type": "function",
                 "function": {"name": item["name"], "arguments": item["arguments"]}}
                for item in self.output if item["type"] == "function_call"]

    # ------------------------------------------------------------------ the stream

    def start(self) -> list[dict[str, Any]]:
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Events for one chat chunk (often one, sometimes none)."""
        if chunk.get("usage"):
            self.usage = dict(chunk["usage"])
        choices = chunk.get("choices") or ()
        if not choices:
            return []
        choice = choices[0]
        delta = choice.get("delta") or {}
        events: list[dict[str, Any]] = []
        if delta.get("reasoning_content"):
            events += self._reasoning(delta["reasoning_content"])
        if delta.get("content"):
            events += self._text(delta["content"])
        for fragment in delta.get("tool_calls") or ():
            events += self._call(fragment)
        if delta.get("annotations"):
            self._annotate(delta["annotations"])
        if choice.get("finish_reason") == "length":
            self.truncated = True
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The last events: the open item closed, then ``response.completed`` (or ``.incomplete``)."""
        events = self._close()
        self.status = "incomplete" if self.truncated else "completed"
        return [*events, self._event(f"response.{self.status}", response=self.response())]

    def fail(self, error: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A failure mid-stream: an ``error`` event, then ``response.failed`` carrying the same error."""
        if self._open is not None:
            self._open["status"] = "incomplete"
            self._open = None
        self.status = "failed"
        self.error = {"code": str(error.get("code") or error.get("type") or "server_error"),
                      "message": str(error.get("message", ""))}
        return [self._event("error", code=self.error["code"], message=self.error["message"],
                            param=error.get("param")),
                self._event("response.failed", response=self.response())]

    # ------------------------------------------------------------------ items

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def _add(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.output.append(item)
        self._open = item
        return [*events, self._event("response.output_item.added", output_index=len(self.output) - 1,
                                     item=_snapshot(item))]

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._open["id"] if self._open else "", "output_index": len(self.output) - 1}

    def _reasoning(self, piece: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._open is None or self._open["type"] != "reasoning":
            events += self._add({"id": self._new_id("rs"), "type": "reasoning", "summary": [],
                                 "status": "in_progress"})
            self._open["summary"].append({"type": "summary_text", "text": ""})
            events.append(self._event("response.reasoning_summary_part.added", **self._where(), summary_index=0,
                                      part={"type": "summary_text", "text": ""}))
        self._open["summary"][0]["text"] += piece
        return [*events, self._event("response.reasoning_summary_text.delta", **self._where(), summary_index=0,
                                     delta=piece)]

    def _text(self, piece: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._open is None or self._open["type"] != "message":
            events += self._add({"id": self._new_id("msg"), "type": "message", "status": "in_progress",
                                 "role": "assistant", "content": []})
            self._open["content"].append({"type": "output_text", "text": "", "annotations": [], "logprobs": []})
            events.append(self._event("response.content_part.added", **self._where(), content_index=0,
                                      part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}))
        self._open["content"][0]["text"] += piece
        return [*events, self._event("response.output_text.delta", **self._where(), content_index=0, delta=piece,
                                     logprobs=[])]

    def _call(self, fragment: Mapping[str, Any]) -> list[dict[str, Any]]:
        function = fragment.get("function") or {}
        if fragment.get("id"):  # the first fragment of a call: name and id, arguments follow
            return self._add({"id": self._new_id("fc"), "type": "function_call", "status": "in_progress",
                              "call_id": fragment["id"], "name": function.get("name", ""), "arguments": ""})
        piece = function.get("arguments") or ""
        if self._open is None or self._open["type"] != "function_call" or not piece:
            return []
        self._open["arguments"] += piece
        return [self._event("response.function_call_arguments.delta", **self._where(), delta=piece)]

    def _annotate(self, annotations: Any) -> None:
        """Citations arrive with the closing chunk; they belong to the last message's text."""
        converted = [a for a in (url_annotation(x) for x in annotations if isinstance(x, Mapping)) if a]
        messages = [item for item in self.output if item["type"] == "message"]
        if converted and messages:
            messages[-1]["content"][0]["annotations"] = converted

    def _close(self) -> list[dict[str, Any]]:
        """Close the growing item: its ``done`` events, then ``response.output_item.done``."""
        item, self._open = self._open, None
        if item is None:
            return []
        where = {"item_id": item["id"], "output_index": self.output.index(item)}
        events = []
        if item["type"] == "reasoning":
            part = item["summary"][0]
            events += [self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=part["text"]),
                       self._event("response.reasoning_summary_part.done", **where, summary_index=0, part=dict(part))]
        elif item["type"] == "message":
            part = item["content"][0]
            events += [self._event("response.output_text.done", **where, content_index=0, text=part["text"],
                                   logprobs=[])]
            events += self._annotations_added(part, where)
            events.append(self._event("response.content_part.done", **where, content_index=0, part=dict(part)))
        else:
            events.append(self._event("response.function_call_arguments.done", **where, name=item["name"],
                                      arguments=item["arguments"]))
        item["status"] = "completed"
        return [*events, self._event("response.output_item.done", output_index=where["output_index"],
                                     item=_snapshot(item))]

    def _annotations_added(self, part: Mapping[str, Any], where: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [self._event("response.output_text.annotation.added", **where, content_index=0, annotation_index=n,
                            annotation=annotation) for n, annotation in enumerate(part["annotations"])]


def _snapshot(item: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an item as it is now, so later growth does not change events already made."""
    copy = dict(item)
    for key in ("content", "summary"):
        if key in copy:
            copy[key] = [dict(part) for part in copy[key]]
    return copy
