"""Tool calling and structured output for a site that has neither: prompts in, OpenAI shapes out.

The site ignores OpenAI ``tools`` (§5.2), so they are described to the model
inside the flattened turn and the model is asked to answer in the format Qwen
models are trained on for function calling::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Tags make the start of a call easy to spot in a stream (only a possible
``<tool_call>`` prefix is ever held back from the client) and JSON inside
makes the arguments easy to check and repair. ``AgentTranslator`` wraps the
plain stream translator: prose streams as ``content``, each call becomes
OpenAI ``tool_calls`` fragments, and an answer that breaks the contract
(``required`` without a call, bad arguments, JSON that misses the schema)
asks the caller for one corrective turn. Pure: no I/O; ids come from a
function the caller passes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import schema as jsonschema_lite
from errors import InvalidRequest, ModelOutputInvalid

OPEN_TAG, CLOSE_TAG = "<tool_call>", "</tool_call>"
_OPEN = re.compile(re.escape(OPEN_TAG), re.I)
_CLOSE = re.compile(re.escape(CLOSE_TAG), re.I)
#: A fence line (```xml) at the end of prose, which may be about to wrap a call.
_FENCE_TAIL = re.compile(r"(?:^|(?<=\n))[ \t]*(?:```[\w+-]*[ \t]*(?:\n[ \t]*)?|`{1,2})$")
_FENCE_OPEN = re.compile(r"```([\w+-]*)[ \t]*(\n|$)")
_MAX_PROBLEMS = 5


# --------------------------------------------------------------------------- request options


@dataclasses.dataclass(frozen=True)
class Tool:
    """One function the client offers the model."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    strict: bool = False


@dataclasses.dataclass(frozen=True)
class OutputFormat:
    """``response_format``: any JSON object, or JSON that matches ``schema``."""

    kind: str  # "json_object" | "json_schema"
    name: str = ""
    schema: Mapping[str, Any] | None = None
    strict: bool = False


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """What a request asks beyond plain text: tools, how to use them, and an output format."""

    tools: tuple[Tool, ...] = ()
    choice: str = "auto"  # auto | none | required | function (then ``forced`` names it)
    forced: str | None = None
    parallel: bool = True
    output: OutputFormat | None = None

    @property
    def calls_tools(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def must_call(self) -> bool:
        return self.calls_tools and self.choice in ("required", "function")

    @property
    def holds_content(self) -> bool:
        """Content cannot stream when it may still be rejected (forced calls, JSON output)."""
        return self.must_call or self.output is not None

    def tool(self, name: str) -> Tool | None:
        for tool in self.tools:
            if tool.name == name:
                return tool
        lowered = name.lower()
        return next((t for t in self.tools if t.name.lower() == lowered), None)

    def fingerprint(self) -> str:
        """Identifies the tool set described at the start of an upstream chat."""
        return json.dumps([[t.name, t.description, t.parameters] for t in self.tools], sort_keys=True)


def parse_agent_spec(body: Mapping[str, Any]) -> AgentSpec | None:
    """``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format``; ``None`` if plain text."""
    tools = _parse_tools(body.get("tools"))
    choice, forced = _parse_tool_choice(body.get("tool_choice"), tools)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest("'parallel_tool_calls' must be true or false.", param="parallel_tool_calls")
    output = _parse_response_format(body.get("response_format"))
    if not tools and output is None:
        return None
    return AgentSpec(tools, choice, forced, parallel is not False, output)


def _parse_tools(raw: Any) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    tools: list[Tool] = []
    for n, item in enumerate(raw):
        param = f"tools[{n}]"
        if not isinstance(item, Mapping):
            raise InvalidRequest(f"{param} must be an object.", param=param)
        if item.get("type", "function") != "function":
            continue  # built-in tools such as web_search are search switches (transform)
        fn = item.get("function")
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise InvalidRequest(f"{param}.function.name is required.", param=f"{param}.function.name")
        parameters = fn.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, Mapping):
            raise InvalidRequest(f"{param}.function.parameters must be a JSON Schema object.",
                                 param=f"{param}.function.parameters")
        if any(t.name == fn["name"] for t in tools):
            raise InvalidRequest(f"{param}: the function name '{fn['name']}' is used twice.", param=param)
        description = fn.get("description") if isinstance(fn.get("description"), str) else ""
        tools.append(Tool(fn["name"], description, parameters, fn.get("strict") is True))
    return tuple(tools)


def _parse_tool_choice(raw: Any, tools: Sequence[Tool]) -> tuple[str, str | None]:
    if raw is None or raw == "auto":
        return "auto", None
    if raw in ("none", "required"):
        if raw == "required" and not tools:
            raise InvalidRequest("tool_choice 'required' needs at least one function in 'tools'.", param="tool_choice")
        return raw, None
    name = None
    if isinstance(raw, Mapping) and raw.get("type") == "function" and isinstance(raw.get("function"), Mapping):
        name = raw["function"].get("name")
    if not isinstance(name, str):
        raise InvalidRequest(
            "'tool_choice' must be 'auto', 'none', 'required' or "
            '{"type": "function", "function": {"name": ...}}.', param="tool_choice")
    if not any(t.name == name for t in tools):
        raise InvalidRequest(f"tool_choice names '{name}', which is not among 'tools'.", param="tool_choice")
    return "function", name


def _parse_response_format(raw: Any) -> OutputFormat | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat("json_object")
    if kind == "json_schema":
        spec = raw.get("json_schema") if isinstance(raw.get("json_schema"), Mapping) else {}
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, Mapping):
            raise InvalidRequest("response_format.json_schema.schema must be an object.",
                                 param="response_format.json_schema.schema")
        name = spec.get("name") if isinstance(spec.get("name"), str) else ""
        return OutputFormat("json_schema", name, schema, spec.get("strict") is True)
    raise InvalidRequest("response_format.type must be 'text', 'json_object' or 'json_schema'.",
                         param="response_format")


# --------------------------------------------------------------------------- prompts


def compose_turn(spec: AgentSpec | None, text: str, fresh: bool) -> str:
    """The message for the site: tool descriptions first (once per upstream chat), the turn, the rules."""
    if spec is None:
        return text
    head = describe_tools(spec.tools) if fresh and spec.tools else ""
    return "\n\n".join(p for p in (head, text, reminder(spec)) if p)


def describe_tools(tools: Sequence[Tool]) -> str:
    """The tools as compact TypeScript-like signatures, and the call format."""
    lines = ["# Tools", "", "You can call these functions. Each is shown as name({parameters}); "
             '"?" marks an optional parameter.', ""]
    for tool in tools:
        params = tool.parameters
        lines.append(f"- {tool.name}({_ts(params, params, 0)})" + (f": {_one_line(tool.description)}"
                                                                  if tool.description else ""))
        properties = params.get("properties") if isinstance(params.get("properties"), Mapping) else {}
        for name, prop in properties.items():
            note = _param_note(prop)
            if note:
                lines.append(f"    {name}: {note}")
    lines += [
        "",
        "To call functions, reply with one block per call, in exactly this format:",
        OPEN_TAG,
        '{"name": <function-name>, "arguments": <args-json-object>}',
        CLOSE_TAG,
        "Rules:",
        '- "arguments" is a JSON object that matches the function\'s parameters.',
        "- Several blocks in one reply are calls made together. Write nothing after the last block: "
        "the results come back in <tool_response> blocks in the next message.",
        "- If no function is needed, answer normally, without any block.",
    ]
    return "\n".join(lines)


def reminder(spec: AgentSpec) -> str:
    """Per-turn rules, at the end of the message where the model heeds them most."""
    rules = []
    if spec.tools and spec.choice == "none":
        rules.append("Do not call any function in this reply; answer in text.")
    elif spec.choice == "required":
        rules.append("You must call at least one function in this reply, as a <tool_call> block.")
    elif spec.choice == "function":
        rules.append(f"You must call the function {spec.forced} in this reply, as a <tool_call> block.")
    if spec.calls_tools and not spec.parallel:
        rules.append("Call at most one function in this reply.")
    output = spec.output
    if output is not None:
        also = " (unless you call a function)" if spec.calls_tools else ""
        if output.kind == "json_schema" and output.schema is not None:
            schema_text = json.dumps(output.schema, ensure_ascii=False, separators=(",", ":"))
            rules.append(f"Reply{also} with only a JSON value that matches this JSON Schema, "
                         f"without prose or code fences:\n{schema_text}")
        else:
            rules.append(f"Reply{also} with only one valid JSON object, without prose or code fences.")
    return "\n".join(rules)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _param_note(prop: Any) -> str:
    if not isinstance(prop, Mapping):
        return ""
    note = _one_line(prop.get("description", "")) if isinstance(prop.get("description"), str) else ""
    if "default" in prop:
        note += f" (default: {json.dumps(prop['default'], ensure_ascii=False)})"
    return note.strip()


def _ts(schema: Any, root: Any, depth: int) -> str:
    """A JSON Schema as a TypeScript-like type: short, and what models read best."""
    if not isinstance(schema, Mapping):
        return "any"
    schema = jsonschema_lite.resolve_ref(schema, root)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return " | ".join(_ts(s, root, depth + 1) for s in schema[key])
    if isinstance(schema.get("enum"), list):
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_ts({**schema, "type": k}, root, depth) for k in kind)
    if kind == "array" or "items" in schema:
        item = _ts(schema.get("items"), root, depth + 1)
        return f"({item})[]" if "|" in item else f"{item}[]"
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
        if not properties or depth > 3:
            return "object" if depth else "{}"
        required = set(schema.get("required") or ())
        fields = [f"{name}{'' if name in required else '?'}: {_ts(prop, root, depth + 1)}"
                  for name, prop in properties.items()]
        return "{" + ", ".join(fields) + "}"
    return kind if isinstance(kind, str) else "any"


# --------------------------------------------------------------------------- history


def format_call(name: str, arguments: Any) -> str:
    """One call as the model is asked to write it; also how earlier calls are shown to it."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN_TAG}\n{body}\n{CLOSE_TAG}"


def fold_tool_calls(calls: Any) -> str:
    """An assistant message's ``tool_calls`` (from the client's history) as call blocks."""
    blocks = []
    for call in calls if isinstance(calls, list) else []:
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            continue
        arguments = fn.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = jsonschema_lite.loads_lenient(arguments) if arguments.strip() else {}
            except ValueError:
                pass  # shown to the model as the string it was
        blocks.append(format_call(str(fn.get("name", "")), arguments))
    return "\n".join(blocks)


def fold_assistant(content: str | None, tool_calls: Any) -> str:
    """An assistant message as the model saw it: its text, then its calls."""
    return "\n".join(filter(None, [(content or "").strip(), fold_tool_calls(tool_calls) if tool_calls else ""]))


def fold_tool_result(name: str, call_id: str, content: str) -> str:
    """A ``role: "tool"`` message as the ``<tool_response>`` block the model was told to expect."""
    attributes = "".join(f' {k}="{v}"' for k, v in (("name", name), ("tool_call_id", call_id)) if v)
    return f"<tool_response{attributes}>\n{content}\n</tool_response>"


def call_names(messages: Sequence[Any]) -> dict[str, str]:
    """``tool_call_id`` → function name, from the assistant messages of a request."""
    names: dict[str, str] = {}
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, Mapping) else None
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
                names[str(call.get("id", ""))] = str(call["function"].get("name", ""))
    return names


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
        self.prose = ""  # all prose, sent or not
        self.sent = 0  # how much of ``prose`` was handed out
        self.opening: bool | None = None  # does the answer open like bare JSON? None: cannot tell yet
        self._buf = ""
        self._state = "text"  # text | call | after

    def feed(self, text: str) -> str:
        """Prose that can be sent now."""
        self._buf += text
        while self._step():
            pass
        return self._release()

    def finish(self) -> None:
        """End of answer: a call left open still counts, held text becomes prose."""
        if self._state == "call":
            self.blocks.append(self._buf)
        elif self._state == "text":
            self.prose += self._buf
        self._buf, self._state = "", "after"

    def _release(self) -> str:
        if self.hold or self.opening is not False:
            return ""  # held whole: a bare JSON call is judged at the end
        piece, self.sent = self.prose[self.sent:], len(self.prose)
        return piece

    def _step(self) -> bool:
        if self._state == "text":
            found = _OPEN.search(self._buf)
            if found is None:
                if self.opening is None:
                    self.opening = _opens_like_json(self._buf)
                    if self.opening is None:
                        return False  # the first line decides; until then all of it stays in the buffer
                keep = self._held_tail(self._buf)
                self.prose += self._buf[: len(self._buf) - keep]
                self._buf = self._buf[len(self._buf) - keep:]
                return False
            self.opening = self.opening or False
            before = self._buf[: found.start()]
            fence = _FENCE_TAIL.search(before)
            self.prose += before[: fence.start()] if fence else before
            self._buf, self._state = self._buf[found.end():], "call"
            return True
        if self._state == "call":
            found = _CLOSE.search(self._buf)
            nested = _OPEN.search(self._buf)
            if nested is not None and (found is None or nested.start() < found.start()):
                found = None  # an unclosed block followed by the next one
                self.blocks.append(self._buf[: nested.start()])
                self._buf = self._buf[nested.end():]
                return True
            if found is None:
                return False
            self.blocks.append(self._buf[: found.start()])
            self._buf, self._state = self._buf[found.end():], "after"
            return True
        rest = self._buf.lstrip().removeprefix("```").lstrip()
        if _OPEN.match(rest):
            self._buf, self._state = rest[len(OPEN_TAG):], "call"
            return True
        if rest and not OPEN_TAG.startswith(rest[: len(OPEN_TAG)].lower()):
            self._buf = ""  # text after the calls: dropped
        return False

    @staticmethod
    def _held_tail(buf: str) -> int:
        """Length of the end of ``buf`` that could still begin a call (a tag prefix, after a fence line)."""
        keep = 0
        lowered = buf[-len(OPEN_TAG):].lower()
        for size in range(min(len(lowered), len(OPEN_TAG) - 1), 0, -1):
            if OPEN_TAG.startswith(lowered[-size:]):
                keep = size
                break
        fence = _FENCE_TAIL.search(buf, 0, len(buf) - keep)
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
        for candidate in jsonschema_lite.json_candidates(block):
            try:
                value = jsonschema_lite.loads_lenient(candidate)
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
    for candidate in jsonschema_lite.json_candidates(text):
        try:
            value = jsonschema_lite.loads_lenient(candidate)
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
        return Call(name, arguments, [f"there is no function named {name!r} (offered: {offered})"], known=False)
    if spec.choice == "function" and tool.name != spec.forced:
        return Call(tool.name, arguments, [f"this reply must call {spec.forced}, not {tool.name}"], known=False)
    if isinstance(arguments, str):
        try:
            arguments = jsonschema_lite.loads_lenient(arguments) if arguments.strip() else {}
        except ValueError:
            return Call(tool.name, arguments, [f"the arguments of {tool.name} are not a JSON object"])
    if arguments is None:
        arguments = {}
    arguments = jsonschema_lite.coerce(arguments, tool.parameters)
    problems = [p.replace("$", f"{tool.name} arguments", 1)
                for p in jsonschema_lite.validate(arguments, tool.parameters)]
    if not isinstance(arguments, dict):
        problems = problems or [f"the arguments of {tool.name} must be a JSON object"]
    return Call(tool.name, arguments, problems)


def _clip(text: str, limit: int = 80) -> str:
    text = _one_line(text)
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
        value = jsonschema_lite.extract_json(prose)
    except ValueError:
        problems = ["the reply holds no JSON value"]
    else:
        if output.kind == "json_object" and not isinstance(value, dict):
            problems = ["the reply must be a JSON object"]
        elif output.schema is not None:
            value = jsonschema_lite.coerce(value, output.schema)
            problems = jsonschema_lite.validate(value, output.schema)
        else:
            problems = []
        if not problems:
            return Verdict(json.dumps(value, ensure_ascii=False), [], [])
    what = "JSON that matches the schema" if output.schema is not None else "a JSON object"
    complaint = (f"Your reply was not {what}: {_problems(problems)}. "
                 "Reply again with only the corrected JSON, without prose or code fences.")
    return Verdict(prose, [], problems, complaint)


class AgentTranslator:
    """Wraps a ``transform.StreamTranslator`` to apply an ``AgentSpec`` to its answer text.

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
            self._scanner.prose += delta["content"]  # JSON output only: held whole
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
                delta = dict(chunk["choices"][0]["delta"])
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

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if not self._sent_role:
            delta = {"role": "assistant", **delta}
            self._sent_role = True
        return {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }


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
