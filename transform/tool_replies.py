"""What the model replied: calls and JSON taken out of its text, judged, turned into OpenAI chunks.

``CallScanner`` splits streamed answer text into prose (sent on at once) and
``<tool_call>`` blocks; ``parse_calls``/``check_call`` read and repair the
calls against their tools; ``judge`` applies the request's contract
(``tool_choice``, ``response_format``); ``AgentTranslator`` wraps the plain
stream translator so prose streams as ``content``, each call goes out as the
``tool_calls`` fragments strict clients parse, and an answer that breaks the
contract asks the caller for one corrective turn. Pure: no I/O; call ids come
from a function the caller passes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from errors import ModelOutputInvalid, echo
from transform import json_schema
from transform.answer import StreamTranslator
from transform.tool_prompts import CLOSE_TAG, OPEN_TAG, AgentSpec, OutputFormat

_OPEN = re.compile(re.escape(OPEN_TAG), re.I)
_CLOSE = re.compile(re.escape(CLOSE_TAG), re.I)
#: A fence line (```xml) at the end of prose, which may be about to wrap a call.
_FENCE_TAIL = re.compile(r"(?:^|(?<=\n))[ \t]*(?:```[\w+-]*[ \t]*(?:\n[ \t]*)?|`{1,2})$")
_FENCE_OPEN = re.compile(r"```([\w+-]*)[ \t]*(\n|$)")
_MAX_PROBLEMS = 5
#: The most text held back while it may still open a call: a fence line, or the answer's undecided start.
#: Anything longer is prose; without a bound, a model's long run of spaces is rescanned on every delta.
_MAX_HELD = 256


# --------------------------------------------------------------------------- parsing calls


@dataclasses.dataclass
class Call:
    """A call the model wrote, checked against its tool."""

    name: str
    arguments: Any
    problems: list[str]
    known: bool = True


class CallScanner:
    """Splits streamed answer text into prose (sent on at once) and ``<tool_call>`` blocks.

    Only what may still turn out to be the start of a call is held back: a
    trailing prefix of ``<tool_call>``, or a code-fence line that may wrap one.
    After the first call, only further calls count; anything else the model
    writes (often an imagined ``<tool_response>``) is dropped, because it was
    written without the real result. With ``hold``, nothing is sent until the
    end, when the whole answer can still be rejected.
    """

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.blocks: list[str] = []
        self.sent = 0  # how much of the prose was handed out
        self.opening: bool | None = None  # does the answer open like bare JSON? None: cannot tell yet
        self._prose: list[str] = []  # pieces, joined on demand: answers can be long
        self._unsent: list[str] = []
        self._block: list[str] = []  # the call being read
        self._buf = ""  # text not yet classified (kept short)
        self._state = "text"  # text | call | after

    @property
    def prose(self) -> str:
        """All prose so far, sent or not."""
        if len(self._prose) > 1:
            self._prose = ["".join(self._prose)]
        return self._prose[0] if self._prose else ""

    @prose.setter
    def prose(self, text: str) -> None:
        self._prose, self._unsent = [text], []

    def add_prose(self, text: str) -> None:
        if text:
            self._prose.append(text)
            self._unsent.append(text)

    def feed(self, text: str) -> str:
        """Prose that can be sent now."""
        self._buf += text
        while self._step():
            pass
        return self._release()

    def finish(self) -> None:
        """End of answer: a call left open still counts, held text becomes prose."""
        if self._state == "call":
            self.blocks.append("".join(self._block) + self._buf)
        elif self._state == "text":
            self.add_prose(self._buf)
        self._buf, self._block, self._state = "", [], "after"

    def _release(self) -> str:
        if self.hold or self.opening is not False or not self._unsent:
            return ""  # held whole: a bare JSON call is judged at the end
        piece = "".join(self._unsent)
        self._unsent.clear()
        self.sent += len(piece)
        return piece

    def _step(self) -> bool:
        if self._state == "text":
            return self._step_text()
        if self._state == "call":
            return self._step_call()
        rest = self._buf.lstrip().removeprefix("```").lstrip()
        if _OPEN.match(rest):
            self._buf, self._state = rest[len(OPEN_TAG):], "call"
            return True
        if rest and not OPEN_TAG.startswith(rest[: len(OPEN_TAG)].lower()):
            self._buf = ""  # text after the calls: dropped
        else:
            self._buf = rest  # whitespace between calls is never kept, so it is never rescanned
        return False

    def _step_text(self) -> bool:
        found = _OPEN.search(self._buf)
        if found is None:
            if self.opening is None:
                self.opening = _opens_like_json(self._buf) if len(self._buf) <= _MAX_HELD else False
                if self.opening is None:
                    return False  # the first line decides; until then all of it stays in the buffer
            keep = self._held_tail(self._buf)
            self.add_prose(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            return False
        self.opening = self.opening or False
        before = self._buf[: found.start()]
        fence = _FENCE_TAIL.search(before)
        self.add_prose(before[: fence.start()] if fence else before)
        self._buf, self._state = self._buf[found.end():], "call"
        return True

    def _step_call(self) -> bool:
        close, nested = _CLOSE.search(self._buf), _OPEN.search(self._buf)
        if nested is not None and (close is None or nested.start() < close.start()):
            end, resume = nested.start(), nested.end()  # an unclosed block followed by the next one
        elif close is not None:
            end, resume = close.start(), close.end()
            self._state = "after"
        else:
            keep = len(CLOSE_TAG) - 1  # only a possible tag start stays in the buffer
            if len(self._buf) > keep:
                self._block.append(self._buf[:-keep])
                self._buf = self._buf[-keep:]
            return False
        self.blocks.append("".join(self._block) + self._buf[:end])
        self._block, self._buf = [], self._buf[resume:]
        return True

    @staticmethod
    def _held_tail(buf: str) -> int:
        """Length of the end of ``buf`` that could still begin a call (a tag prefix, after a fence line)."""
        if "<" not in buf[-len(OPEN_TAG):] and "`" not in buf:
            return 0  # the common case, cheaply
        keep = 0
        lowered = buf[-len(OPEN_TAG):].lower()
        for size in range(min(len(lowered), len(OPEN_TAG) - 1), 0, -1):
            if OPEN_TAG.startswith(lowered[-size:]):
                keep = size
                break
        fence = _FENCE_TAIL.search(buf, max(0, len(buf) - _MAX_HELD), len(buf) - keep)
        return len(buf) - fence.start() if fence is not None else keep


def _opens_like_json(text: str) -> bool | None:
    """Whether an answer starts like a bare JSON call (``{`` or a json fence); ``None``: too short to tell."""
    head = text.lstrip()
    if not head or "```".startswith(head):
        return None
    if head[0] == "{":
        return True
    found = _FENCE_OPEN.match(head)
    if found is None:
        return False if not head.startswith("```") else None
    if not found.group(2):
        return None  # the fence line is not complete yet
    return found.group(1).lower() in ("", "json")


def parse_calls(blocks: Sequence[str], spec: AgentSpec) -> list[Call]:
    """Calls from the text of ``<tool_call>`` blocks (several per block allowed)."""
    calls: list[Call] = []
    for block in blocks:
        found = False
        for candidate in json_schema.json_candidates(block):
            try:
                value = json_schema.loads_lenient(candidate)
            except ValueError:
                continue
            for name, arguments in _call_shapes(value):
                calls.append(check_call(name, arguments, spec))
                found = True
            if found:
                break
        if not found and block.strip():
            calls.append(Call("", None, [f"this block is not a JSON call: {_clip(block)}"], known=False))
    return calls


def bare_calls(text: str, spec: AgentSpec) -> tuple[list[Call], str]:
    """Fallback for an answer that is nothing but a JSON call (fenced or not), without the tags."""
    for candidate in json_schema.json_candidates(text):
        try:
            value = json_schema.loads_lenient(candidate)
        except ValueError:
            continue
        shapes = _call_shapes(value)
        if shapes and all(spec.tool(name) for name, _ in shapes):
            start = text.find(candidate)
            rest = text[:start] + text[start + len(candidate):] if start >= 0 else ""
            rest = re.sub(r"```[\w+-]*\s*```", "", rest).strip()
            return [check_call(name, arguments, spec) for name, arguments in shapes], rest
        break
    return [], text


def _call_shapes(value: Any) -> list[tuple[str, Any]]:
    """(name, arguments) of every call-like object: ours, OpenAI's, or a list of them."""
    if isinstance(value, list):
        return [shape for item in value for shape in _call_shapes(item)]
    if not isinstance(value, Mapping):
        return []
    fn = value.get("function")
    if isinstance(fn, Mapping):
        value = fn
    elif isinstance(fn, str) and "name" not in value:
        value = {**value, "name": fn}
    name = value.get("name") or value.get("tool") or value.get("tool_name")
    if not isinstance(name, str) or not name:
        return []
    for key in ("arguments", "parameters", "args", "input"):
        if key in value:
            return [(name, value[key])]
    return [(name, {})]


def check_call(name: str, arguments: Any, spec: AgentSpec) -> Call:
    """Resolve the tool, repair the arguments where the schema is clear, and list what is still wrong."""
    tool = spec.tool(name)
    if tool is None:
        offered = ", ".join(t.name for t in spec.tools)
        return Call(name, arguments, [f"there is no function named '{echo(name)}' (offered: {offered})"],
                    known=False)
    if spec.choice == "function" and tool.name != spec.forced:
        return Call(tool.name, arguments, [f"this reply must call {spec.forced}, not {tool.name}"], known=False)
    if isinstance(arguments, str):
        try:
            arguments = json_schema.loads_lenient(arguments) if arguments.strip() else {}
        except ValueError:
            return Call(tool.name, arguments, [f"the arguments of {tool.name} are not a JSON object"])
    if arguments is None:
        arguments = {}
    arguments = json_schema.coerce(arguments, tool.parameters)
    problems = [p.replace("$", f"{tool.name} arguments", 1)
                for p in json_schema.validate(arguments, tool.parameters)]
    if not isinstance(arguments, dict):
        problems = problems or [f"the arguments of {tool.name} must be a JSON object"]
    return Call(tool.name, arguments, problems)


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _problems(items: Sequence[str]) -> str:
    shown = "; ".join(items[:_MAX_PROBLEMS])
    return shown + (f"; and {len(items) - _MAX_PROBLEMS} more" if len(items) > _MAX_PROBLEMS else "")


# --------------------------------------------------------------------------- the translator


@dataclasses.dataclass
class Verdict:
    """What an answer amounts to once it is complete."""

    content: str | None
    calls: list[Call]
    problems: list[str]
    complaint: str = ""  # the corrective turn, when problems remain


def judge(prose: str, calls: list[Call], spec: AgentSpec, truncated: bool) -> Verdict:
    """Apply the request's contract to a complete answer (prose plus parsed calls)."""
    if truncated:
        return Verdict(prose, [], [])  # cut by max_tokens: handed over as it is, finish_reason "length"
    if calls:
        if not spec.parallel:
            calls = calls[:1]
        problems = [p for c in calls for p in c.problems]
        complaint = (f"Your function call could not be used: {_problems(problems)}. "
                     "Reply again with corrected <tool_call> blocks only.")
        return Verdict(prose.strip() or None, calls, problems, complaint if problems else "")
    if spec.must_call:
        target = f"the function {spec.forced}" if spec.forced else "one of the functions"
        problem = f"the reply called no function, but it had to call {target}"
        return Verdict(prose, [], [problem], f"You did not call a function, but this reply must call {target}. "
                                             "Reply now with only <tool_call> blocks, in the format given.")
    if spec.output is not None:
        return _judge_json(prose, spec.output)
    return Verdict(prose, [], [])


def _judge_json(prose: str, output: OutputFormat) -> Verdict:
    try:
        value = json_schema.extract_json(prose)
    except ValueError:
        problems = ["the reply holds no JSON value"]
    else:
        if output.kind == "json_object" and not isinstance(value, dict):
            problems = ["the reply must be a JSON object"]
        elif output.schema is not None:
            value = json_schema.coerce(value, output.schema)
            problems = json_schema.validate(value, output.schema)
        else:
            problems = []
        if not problems:
            return Verdict(json.dumps(value, ensure_ascii=False), [], [])
    what = "JSON that matches the schema" if output.schema is not None else "a JSON object"
    complaint = (f"Your reply was not {what}: {_problems(problems)}. "
                 "Reply again with only the corrected JSON, without prose or code fences.")
    return Verdict(prose, [], problems, complaint)


class AgentTranslator:
    """Wraps a ``translator.StreamTranslator`` to apply an ``AgentSpec`` to its answer text.

    Thinking passes straight through. Answer text goes through a
    ``CallScanner``; when the upstream answer is over the caller calls
    ``conclude()``: either the answer is accepted, or ``retry_prompt`` holds a
    corrective message for one more upstream turn (then ``retry()``), or, on
    the last attempt, ``ModelOutputInvalid`` is raised. ``finish()`` and
    ``completion()`` then give the OpenAI shapes.
    """

    def __init__(self, spec: AgentSpec, make_inner: Callable[[], Any], new_call_id: Callable[[], str]) -> None:
        self.spec = spec
        self._make_inner, self._new_call_id = make_inner, new_call_id
        self.inner = make_inner()
        self.id, self.model, self.created = self.inner.id, self.inner.model, self.inner.created
        self.attempts = 1
        self.retry_prompt: str | None = None
        self.verdict: Verdict | None = None
        self.tool_calls: list[dict[str, Any]] = []
        self._holding = spec.holds_content
        self._scanner = CallScanner(hold=self._holding)
        self._sent_role = False
        self._closing: list[dict[str, Any]] = []
        self._earlier_usage: dict[str, Any] | None = None

    # the parts of the inner translator's interface that Turn reads
    @property
    def finished(self) -> bool:
        return self.inner.finished

    @property
    def has_output(self) -> bool:
        return self.inner.has_output

    @property
    def has_answer(self) -> bool:
        return self.inner.has_answer

    @property
    def answer(self) -> Any:
        return self.inner.answer

    @property
    def response_id(self) -> str | None:
        return self.inner.response_id

    @property
    def content(self) -> str | None:
        """The answer as the client sees it (after ``conclude``)."""
        return self.verdict.content if self.verdict else None

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for chunk in self.inner.feed(event):
            out += self._relay(chunk["choices"][0]["delta"])
        return out

    def _relay(self, delta: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = []
        if delta.get("reasoning_content"):
            out.append(self._chunk({"reasoning_content": delta["reasoning_content"]}))
        if delta.get("content") and self.spec.calls_tools:
            shown = self._scanner.feed(delta["content"])
            if shown:
                out.append(self._chunk({"content": shown}))
        elif delta.get("content"):
            self._scanner.add_prose(delta["content"])  # JSON output only: held whole
        return out

    def conclude(self, can_retry: bool) -> list[dict[str, Any]]:
        """Judge the finished upstream answer; returns chunks still to send (thinking held at the end).

        Afterwards either ``retry_prompt`` is set (one corrective turn is wanted)
        or the verdict stands; on the last attempt an unusable answer raises.
        """
        out: list[dict[str, Any]] = []
        self._closing = []
        for chunk in self.inner.finish():
            choice = chunk["choices"][0] if chunk["choices"] else None
            if choice is not None and choice["finish_reason"] is None:
                out += self._relay(choice["delta"])
            else:
                self._closing.append(chunk)
        verdict = self._judge()
        self.retry_prompt = None
        if verdict.problems:
            if can_retry and self.attempts == 1:
                self.retry_prompt = verdict.complaint
                return out
            verdict = self._last_word(verdict)
        self.verdict = verdict
        return out

    def _judge(self) -> Verdict:
        scanner = self._scanner
        if not self.spec.calls_tools:
            return judge(scanner.prose, [], self.spec, self.inner.truncated)
        scanner.finish()
        calls = parse_calls(scanner.blocks, self.spec)
        if not scanner.blocks and not scanner.sent:
            calls, scanner.prose = bare_calls(scanner.prose, self.spec)
        return judge(scanner.prose, calls, self.spec, self.inner.truncated)

    def _last_word(self, verdict: Verdict) -> Verdict:
        """After the corrective turn: use what can be used, refuse what cannot."""
        usable = [c for c in verdict.calls if c.known and not (c.problems and self._strict(c.name))]
        if verdict.calls and usable:
            return Verdict(verdict.content, usable, [])
        what = "the tool-call format" if self.spec.calls_tools and (verdict.calls or self.spec.must_call) \
            else "response_format"
        raise ModelOutputInvalid(
            f"The model did not comply with {what} after one corrective retry: {_problems(verdict.problems)}. "
            "Retry the request, or simplify the tools or schema."
        )

    def _strict(self, name: str) -> bool:
        tool = self.spec.tool(name)
        return bool(tool and tool.strict)

    def retry(self) -> None:
        """Start over on the answer of the corrective turn (thinking already sent stays sent)."""
        self._earlier_usage = _add_usage(self._earlier_usage, self.inner.completion().get("usage"))
        self.inner = self._make_inner()
        self.attempts += 1
        self.retry_prompt = None
        self._holding = True  # show only an answer that passed
        self._scanner = CallScanner(hold=True)

    def finish(self) -> list[dict[str, Any]]:
        """Held content, the call fragments, the finish chunk and the usage chunk."""
        verdict = self.verdict or Verdict(self._scanner.prose, [], [])
        out = []
        rest = (verdict.content or "") if self._holding else self._scanner.prose[self._scanner.sent:]
        if rest:
            out.append(self._chunk({"content": rest}))
        self.tool_calls = [self._tool_call(call) for call in verdict.calls]
        for index, call in enumerate(self.tool_calls):
            fn = call["function"]
            out.append(self._chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                    "function": {"name": fn["name"], "arguments": ""}}]}))
            out.append(self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fn["arguments"]}}]}))
        for chunk in self._closing:
            if chunk["choices"]:
                delta = {k: v for k, v in chunk["choices"][0]["delta"].items() if k != "role"}
                reason = "tool_calls" if self.tool_calls else chunk["choices"][0]["finish_reason"]
                out.append(self._chunk(delta, reason))
            else:
                chunk = dict(chunk, usage=_add_usage(self._earlier_usage, chunk.get("usage")))
                out.append(chunk)
        return out

    def _tool_call(self, call: Call) -> dict[str, Any]:
        arguments = call.arguments if isinstance(call.arguments, str) else \
            json.dumps(call.arguments, ensure_ascii=False, separators=(",", ":"))
        return {"id": self._new_call_id(), "type": "function", "function": {"name": call.name, "arguments": arguments}}

    def completion(self) -> dict[str, Any]:
        result = self.inner.completion()
        choice = result["choices"][0]
        message = dict(choice["message"])
        message["content"] = self.content if self.verdict else message["content"]
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
            choice = dict(choice, finish_reason="tool_calls")
        result = dict(result, choices=[dict(choice, message=message)])
        result["usage"] = _add_usage(self._earlier_usage, result.get("usage"))
        return result

    #: The plain translator's chunk shape and role-on-the-first-chunk rule (it reads only id, created,
    #: model and _sent_role, which this class has too).
    _chunk = StreamTranslator._chunk


def _add_usage(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Field-wise sum of two OpenAI usage objects (a corrective turn costs tokens too)."""
    if a is None or b is None:
        return dict(b) if b is not None else (dict(a) if a is not None else None)
    total: dict[str, Any] = {}
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if isinstance(x, Mapping) or isinstance(y, Mapping):
            total[key] = _add_usage(x if isinstance(x, Mapping) else {}, y if isinstance(y, Mapping) else {})
        elif isinstance(x, (int, float)) or isinstance(y, (int, float)):
            total[key] = (x or 0) + (y or 0)
    return total


def translator_for(spec: AgentSpec | None, make_inner: Callable[[], Any], new_call_id: Callable[[], str]) -> Any:
    """The plain translator for plain text; an ``AgentTranslator`` when tools or a JSON format apply."""
    if spec is None or not (spec.calls_tools or spec.output is not None):
        return make_inner()
    return AgentTranslator(spec, make_inner, new_call_id)
