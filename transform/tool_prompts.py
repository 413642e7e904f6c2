"""Tool calling and structured output for a site that has neither: prompts in, OpenAI shapes out.

The site ignores OpenAI ``tools`` (§5.2), so they are described to the model
inside the flattened turn and the model is asked to answer in the format Qwen
models are trained on for function calling::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Tags make the start of a call easy to spot in a stream (only a possible
``<tool_call>`` prefix is ever held back from the client) and JSON inside
makes the arguments easy to check and repair.

This module is the request side: the options (``AgentSpec``), the prompt
text, and the history folded back into that format. Reading the model's
replies is :mod:`replies`. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from errors import InvalidRequest, echo
from transform import json_schema

OPEN_TAG, CLOSE_TAG = "<tool_call>", "</tool_call>"


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
            raise InvalidRequest(f"{param}: the function name '{echo(fn['name'])}' is used twice.", param=param)
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
        raise InvalidRequest(f"tool_choice names '{echo(name)}', which is not among 'tools'.", param="tool_choice")
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
    schema = json_schema.resolve_ref(schema, root)
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
                arguments = json_schema.loads_lenient(arguments) if arguments.strip() else {}
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
