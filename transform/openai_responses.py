"""The request side of the OpenAI Responses API (``POST /v1/responses``), translated into the chat request.

A Responses body is read into the same :class:`~transform.openai_chat.ChatRequest`
the chat endpoint builds, so a response runs the very same turn (accounts,
continuation of upstream chats, tool emulation, media, errors): ``instructions``
become the system message, ``input`` items become messages (``function_call``
items fold into the assistant message before them, ``function_call_output``
items become ``<tool_response>`` blocks, ``reasoning`` items are dropped: the
model never sees earlier thinking), flat function tools become chat tools,
``text.format`` becomes ``response_format`` and ``reasoning.effort`` the
thinking switch. With ``previous_response_id`` the stored conversation of that
response is put in front, which is what lets ``qwen_client.conversations`` find
the upstream chat it continues. The answer side is
:mod:`transform.openai_responses_events`. Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from errors import InvalidRequest
from transform import tool_prompts
from transform.media_parts import MediaPart, check_turn, decode_inline, place_media, placeholder, split_content
from transform.openai_chat import ChatRequest

#: Built-in tools that switch on the site's web search.
SEARCH_TOOLS = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26",
                          "web_search_preview_2025_03_11"})
_EFFORT_OFF = frozenset({"none", "minimal"})
_INPUT_ROLES = frozenset({"user", "system", "developer", "assistant"})
#: Item types that carry nothing the model should read again (hosted search calls, earlier thinking).
_SKIPPED_ITEMS = frozenset({"reasoning", "web_search_call"})
_UNSUPPORTED = {
    "background": "background responses are not supported; poll-free streaming is",
    "conversation": "the Conversations API is not supported; use previous_response_id or send the input",
    "prompt": "stored prompts are not supported; send instructions and input",
}
Message = tuple[str, str, tuple[MediaPart, ...]]


@dataclasses.dataclass(frozen=True)
class ResponsesRequest:
    """A validated Responses body: the chat request to run and what the response object echoes."""

    chat: ChatRequest
    echo: dict[str, Any]  # request fields the response object repeats (model, tools, text, ...)
    store: bool = True
    previous_response_id: str | None = None


def previous_response_id(body: Any) -> str | None:
    """The response a body continues, checked before the rest (its history must be looked up first)."""
    value = body.get("previous_response_id") if isinstance(body, Mapping) else None
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest("'previous_response_id' must be a response id string.", param="previous_response_id")
    return value.strip()


def parse_responses_request(
    body: Any, history: Sequence[tuple[str, str]] = (), call_names: Mapping[str, str] | None = None
) -> ResponsesRequest:
    """Validate a Responses body.

    ``history`` is the stored conversation of ``previous_response_id`` and
    ``call_names`` the function names of its calls (``call_id`` → name), which
    ``function_call_output`` items answer without repeating them.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequest("The request body must be a JSON object.")
    for key, why in _UNSUPPORTED.items():
        if body.get(key) not in (None, False):
            raise InvalidRequest(f"'{key}': {why}.", param=key, code="unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    instructions = _optional(body, "instructions", str, None)
    items = _input_messages(body.get("input"), call_names or {})
    messages, media = place_media(_history(history, instructions) + items)
    check_turn(media)
    if not any(role in ("user", "tool") for role, _ in messages):
        raise InvalidRequest("'input' must contain a user message or a function_call_output.", param="input")
    tools, search = _tools(body.get("tools"))
    tools, search = _allowed(body.get("tool_choice"), tools, search)
    chat_body = {"tools": tools, "tool_choice": _tool_choice(body.get("tool_choice")),
                 "parallel_tool_calls": _optional(body, "parallel_tool_calls", bool, None),
                 "response_format": _text_format(body.get("text"))}
    chat = ChatRequest(
        model=model,
        messages=messages,
        stream=_optional(body, "stream", bool, False),
        include_usage=True,  # the response object always carries usage
        thinking=_thinking(body.get("reasoning")),
        search=search or _hosted_choice(body.get("tool_choice")),
        max_tokens=_max_output_tokens(body),
        media=tuple(decode_inline(part) for part in media),
        agent=tool_prompts.parse_agent_spec(chat_body),
    )
    return ResponsesRequest(chat, _echo(body, model, instructions), _optional(body, "store", bool, True),
                            previous_response_id(body))


def _kind(obj: Mapping[str, Any]) -> str | None:
    """An object's ``type`` when it is a string (anything else matches no known type)."""
    value = obj.get("type")
    return value if isinstance(value, str) else None


def _optional(body: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidRequest(f"'{key}' has the wrong type.", param=key)
    return value


def _history(history: Sequence[tuple[str, str]], instructions: str | None) -> list[Message]:
    """The earlier conversation; new ``instructions`` replace the system text it began with.

    Without new instructions the earlier ones stay: the upstream chat holds them
    anyway, and keeping them is what lets the turn continue that chat.
    """
    earlier = [(role, text, ()) for role, text in history if role != "system" or instructions is None]
    if instructions is None:
        return earlier
    return [("system", instructions, ()), *earlier] if instructions else earlier


# --------------------------------------------------------------------------- input items


def _input_messages(raw: Any, earlier_calls: Mapping[str, str]) -> list[Message]:
    """``input`` as chat messages: a string is one user message; items are read in order."""
    if isinstance(raw, str):
        return [("user", raw, ())]
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'input' must be a string or a non-empty array of input items.", param="input")
    names = {**earlier_calls, **{str(item.get("call_id")): str(item.get("name", "")) for item in raw
                                 if isinstance(item, Mapping) and item.get("type") == "function_call"}}
    messages: list[Message] = []
    calls: list[dict[str, Any]] = []  # function_call items since the last assistant text
    for i, item in enumerate(raw):
        param = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidRequest(f"{param} must be an object.", param=param)
        kind = _kind(item) or ("message" if "type" not in item and "role" in item else None)
        if kind in _SKIPPED_ITEMS:
            continue
        if kind == "function_call":
            calls.append(_function_call(item, param))
            continue
        if calls:
            messages, calls = _close_assistant(messages, calls), []
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call_output":
            messages.append(_call_output(item, param, names))
        else:
            raise InvalidRequest(f"{param}: input items of type '{kind}' are not supported; use message, "
                                 "function_call, function_call_output or reasoning.", param=f"{param}.type")
    return _close_assistant(messages, calls) if calls else messages


def _close_assistant(messages: list[Message], calls: list[dict[str, Any]]) -> list[Message]:
    """An assistant's text and the calls that followed it, as one message in the emulation's format.

    This is how ``qwen_client.conversations`` remembered the answer, so the
    conversation is recognised and its upstream chat continued.
    """
    text = ""
    if messages and messages[-1][0] == "assistant":
        text = messages.pop()[1]
    return [*messages, ("assistant", tool_prompts.fold_assistant(text, calls), ())]


def _function_call(item: Mapping[str, Any], param: str) -> dict[str, Any]:
    name, arguments = item.get("name"), item.get("arguments", "")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{param}.name is required for a function_call.", param=f"{param}.name")
    if not isinstance(arguments, str):
        raise InvalidRequest(f"{param}.arguments must be a JSON string.", param=f"{param}.arguments")
    return {"id": str(item.get("call_id", "")), "type": "function", "function": {"name": name, "arguments": arguments}}


def _call_output(item: Mapping[str, Any], param: str, names: Mapping[str, str]) -> Message:
    call_id, output = str(item.get("call_id") or ""), item.get("output")
    if isinstance(output, list):
        text, media = split_content([_part(p, f"{param}.output[{j}]") for j, p in enumerate(output)],
                                    f"{param}.output")
        output = "\n".join(filter(None, [text, *(placeholder(part) for part in media)]))  # not sent again
    if not isinstance(output, str):
        raise InvalidRequest(f"{param}.output must be a string or an array of input_text parts.",
                             param=f"{param}.output")
    return ("tool", tool_prompts.fold_tool_result(names.get(call_id, ""), call_id, output), ())


def _message(item: Mapping[str, Any], param: str) -> Message:
    role = item.get("role")
    if not isinstance(role, str) or role not in _INPUT_ROLES:
        raise InvalidRequest(f"{param}.role must be one of {', '.join(sorted(_INPUT_ROLES))}.", param=f"{param}.role")
    content = item.get("content")
    if isinstance(content, list):
        content = [_part(part, f"{param}.content[{j}]") for j, part in enumerate(content)]
    elif not isinstance(content, str):
        raise InvalidRequest(f"{param}.content must be a string or an array of content parts.",
                             param=f"{param}.content")
    text, media = split_content(content, f"{param}.content")
    if media and role != "user":
        raise InvalidRequest(f"{param}: only user messages may carry images or files.", param=f"{param}.content")
    return ("system" if role == "developer" else role, text, media)


def _part(part: Any, param: str) -> dict[str, Any]:
    """One Responses content part in the chat API's shape, which ``media_parts`` reads."""
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind in ("input_text", "output_text", "text", "summary_text", "refusal"):
        field = "refusal" if kind == "refusal" else "text"
        if not isinstance(part.get(field), str):
            raise InvalidRequest(f"{param}.{field} must be a string.", param=param)
        return {"type": "text", "text": part[field]}
    if kind == "input_image":
        if part.get("file_id") and not part.get("image_url"):
            raise _no_file_ids(param)
        return {"type": "image_url", "image_url": {"url": part.get("image_url")}}
    if kind == "input_file":
        if part.get("file_url") and not part.get("file_data"):
            return _file_url(part, param)
        if part.get("file_id") and not part.get("file_data"):
            raise _no_file_ids(param)
        return {"type": "file", "file": {"file_data": part.get("file_data"), "filename": part.get("filename")}}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio")}
    raise InvalidRequest(f"{param}: content parts of type '{kind}' are not supported; use input_text, "
                         "input_image, input_file or input_audio.", param=param, code="unsupported_content")


def _file_url(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    """A file by URL: fetched like images are, when its type says it is one; documents need ``file_data``."""
    url = str(part.get("file_url"))
    if url.lower().split("?")[0].endswith((".png", ".jpg", ".jpeg", ".gif", ".webp")):
        return {"type": "image_url", "image_url": {"url": url}}
    raise InvalidRequest(f"{param}.file_url: documents by URL are not supported; send them as file_data "
                         "(base64 or a data URL).", param=param, code="unsupported_content")


def _no_file_ids(param: str) -> InvalidRequest:
    return InvalidRequest(f"{param}.file_id: uploaded OpenAI files are not supported; send the content inline "
                          "(image_url or file_data).", param=param, code="unsupported_content")


# --------------------------------------------------------------------------- tools and options


def _tools(raw: Any) -> tuple[list[dict[str, Any]], bool]:
    """Flat Responses function tools in the chat API's shape, and whether a web search tool is among them."""
    if raw is None:
        return [], False
    if not isinstance(raw, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    tools, search = [], False
    for n, item in enumerate(raw):
        param = f"tools[{n}]"
        if not isinstance(item, Mapping):
            raise InvalidRequest(f"{param} must be an object.", param=param)
        kind = _kind(item)
        search = search or kind in SEARCH_TOOLS
        if kind != "function":
            continue  # other built-in tools (file search, computer use, ...) have no counterpart on the site
        if not isinstance(item.get("name"), str) or not item["name"].strip():
            raise InvalidRequest(f"{param}.name is required.", param=f"{param}.name")
        parameters = item.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise InvalidRequest(f"{param}.parameters must be a JSON Schema object.", param=f"{param}.parameters")
        if any(tool["function"]["name"] == item["name"] for tool in tools):
            raise InvalidRequest(f"{param}: the function name '{item['name']}' is used twice.", param=param)
        function = {"name": item["name"], "description": item.get("description") or "",
                    "parameters": parameters, "strict": item.get("strict") is not False}  # the API's default
        tools.append({"type": "function", "function": function})
    return tools, search


def _allowed(raw: Any, tools: list[dict[str, Any]], search: bool) -> tuple[list[dict[str, Any]], bool]:
    """``{"type": "allowed_tools", "tools": [...]}``: only the listed tools are offered (search only if listed)."""
    if not (isinstance(raw, Mapping) and raw.get("type") == "allowed_tools"):
        return tools, search
    listed = raw.get("tools")
    if not isinstance(listed, list) or not all(isinstance(t, Mapping) for t in listed):
        raise InvalidRequest("tool_choice.tools must be an array of tool references.", param="tool_choice.tools")
    names = {t["name"] for t in listed if _kind(t) == "function" and isinstance(t.get("name"), str)}
    return ([t for t in tools if t["function"]["name"] in names],
            search and any(_kind(t) in SEARCH_TOOLS for t in listed))


def _tool_choice(raw: Any) -> Any:
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, Mapping) and raw.get("type") == "allowed_tools":
        if raw.get("mode", "auto") not in ("auto", "required"):
            raise InvalidRequest("tool_choice.mode must be 'auto' or 'required'.", param="tool_choice.mode")
        return raw.get("mode", "auto")
    if isinstance(raw, Mapping) and raw.get("type") == "function" and isinstance(raw.get("name"), str):
        return {"type": "function", "function": {"name": raw["name"]}}
    if isinstance(raw, Mapping) and _kind(raw) in SEARCH_TOOLS:
        return "auto"  # a hosted tool: search is switched on, the model answers as usual
    raise InvalidRequest("'tool_choice' must be 'auto', 'none', 'required', "
                         '{"type": "function", "name": ...}, {"type": "allowed_tools", ...} or a web_search tool.',
                         param="tool_choice")


def _hosted_choice(raw: Any) -> bool:
    return isinstance(raw, Mapping) and _kind(raw) in SEARCH_TOOLS


def _text_format(raw: Any) -> dict[str, Any] | None:
    """``text.format`` as the chat API's ``response_format``."""
    if raw is None:
        return None
    fmt = raw.get("format") if isinstance(raw, Mapping) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind != "json_schema":
        raise InvalidRequest("text.format.type must be 'text', 'json_object' or 'json_schema'.",
                             param="text.format")
    if not isinstance(fmt.get("schema"), Mapping):
        raise InvalidRequest("text.format.schema must be a JSON Schema object.", param="text.format.schema")
    return {"type": "json_schema", "json_schema": {"name": fmt.get("name") or "", "schema": fmt["schema"],
                                                   "strict": fmt.get("strict") is True}}


def _thinking(raw: Any) -> bool | None:
    """``reasoning.effort``: ``none`` / ``minimal`` switch thinking off, any other effort on."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidRequest("'reasoning' must be an object.", param="reasoning")
    effort = raw.get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str):
        raise InvalidRequest("reasoning.effort must be a string.", param="reasoning.effort")
    return effort.lower() not in _EFFORT_OFF


def _max_output_tokens(body: Mapping[str, Any]) -> int | None:
    value = _optional(body, "max_output_tokens", int, None)
    if value is not None and value < 1:
        raise InvalidRequest("'max_output_tokens' must be at least 1.", param="max_output_tokens")
    return value


def _echo(body: Mapping[str, Any], model: str, instructions: str | None) -> dict[str, Any]:
    """The request fields a response object repeats, with the API's defaults."""
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), Mapping) else {}
    text = body.get("text") if isinstance(body.get("text"), Mapping) else {}
    metadata = body.get("metadata") if isinstance(body.get("metadata"), Mapping) else {}
    return {
        "instructions": instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": dict(metadata),
        "model": model,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store") is not False,
        "temperature": body.get("temperature") if isinstance(body.get("temperature"), (int, float)) else 1.0,
        "text": {"format": text.get("format") if isinstance(text.get("format"), Mapping) else {"type": "text"}},
        "tool_choice": body.get("tool_choice") if body.get("tool_choice") is not None else "auto",
        "tools": list(body.get("tools") or []) if isinstance(body.get("tools"), list) else [],
        "top_p": body.get("top_p") if isinstance(body.get("top_p"), (int, float)) else 1.0,
        "truncation": "disabled",
        "user": body.get("user") if isinstance(body.get("user"), str) else None,
    }
