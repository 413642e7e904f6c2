"""The request side of the Anthropic Messages API: a ``/v1/messages`` body as the chat turn the proxy runs.

A Messages body is rewritten as the OpenAI chat body it means (system prompt,
text, images, documents, ``tool_use``/``tool_result`` history, tools and
``tool_choice``, thinking, ``max_tokens``) and read by the very same
``openai_chat.parse_chat_request``, so both APIs reach the same turns, tool
emulation, media checks and continuation of upstream chats. What only the
Messages API has (``stop_sequences``, the model name echoed back) travels
beside it in ``MessagesRequest``. The answer side is ``transform.anthropic_stream``.

Pure: no I/O, no clock; errors are ``InvalidRequest`` naming the Messages field.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from errors import InvalidRequest
from transform import openai_chat, tool_prompts

#: Model names that start like this are Anthropic's; unmapped, they run on the default model.
CLAUDE_PREFIX = "claude"
#: Bounds that keep the stop-sequence scan of an answer cheap (no client comes near them).
MAX_STOP_SEQUENCES, MAX_STOP_SEQUENCE_CHARS = 64, 1000
#: count_tokens: what one image or one page-sized piece of a document is reckoned at (see ``estimate_tokens``).
IMAGE_TOKENS = 1000
DOCUMENT_BYTES_PER_TOKEN = 6
_ROLES = ("user", "assistant")
#: The key that carries a Messages path (``messages.2.content.1``) through the chat parser, for its errors.
WHERE = "_where"
_SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result"})


@dataclasses.dataclass(frozen=True)
class MessagesRequest:
    """A validated Messages body: the chat request it runs as, and what only Messages answers need."""

    chat: openai_chat.ChatRequest
    model: str  # as the client named it; echoed in every answer
    stop_sequences: tuple[str, ...] = ()
    #: The client asked for thinking (``enabled`` or ``adaptive``); without it, as Anthropic's API does, answers
    #: carry no thinking blocks unless the model id asks for thinking (``-thinking``).
    thinking: bool = False
    #: A final assistant message to continue ("prefill"): the model is asked to start with it, and the
    #: answer is what follows it.
    prefill: str = ""


# --------------------------------------------------------------------------- models


def map_model(requested: str, table: Sequence[tuple[str, str]]) -> str:
    """The Qwen model id for a requested name: ``ANTHROPIC_MODEL_MAP`` first, then Claude names → ``""``.

    ``""`` means the default model. Patterns are shell-style (``claude-opus-*``),
    matched case-insensitively in order; a name that matches none and is not a
    Claude name is taken as a Qwen id (suffixes included).
    """
    name = requested.strip()
    lowered = name.lower()
    for pattern, target in table:
        if fnmatch.fnmatchcase(lowered, pattern.lower()):
            return target
    return "" if lowered.startswith(CLAUDE_PREFIX) else name


def model_object(model_id: str, created: int, runs_on: str = "") -> dict[str, Any]:
    """A Models API entry (``client.models.list/retrieve`` of the anthropic SDK)."""
    stamp = datetime.datetime.fromtimestamp(max(0, created), datetime.timezone.utc)
    name = f"{model_id} (runs on {runs_on})" if runs_on and runs_on != model_id else model_id
    return {"type": "model", "id": model_id, "display_name": name,
            "created_at": stamp.isoformat().replace("+00:00", "Z")}


def model_page(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The whole list as one page: the site offers a few dozen ids at most."""
    return {"data": list(entries), "has_more": False, "first_id": entries[0]["id"] if entries else None,
            "last_id": entries[-1]["id"] if entries else None}


# --------------------------------------------------------------------------- the body


def parse_messages_request(body: Any, counting: bool = False) -> MessagesRequest:
    """Validate a Messages body (``counting``: a count_tokens body, without ``max_tokens``) and translate it."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model: Field required (a Qwen model id or a Claude model name).", param="model")
    messages, prefill = _prefill(_messages(body.get("messages")))
    chat_body: dict[str, Any] = {
        "model": model,
        "messages": [*_system(body.get("system")), *messages],
        "stream": False if counting else _typed(body, "stream", bool, False),
    }
    if not counting:
        max_tokens = _typed(body, "max_tokens", int, None)
        if max_tokens is not None and max_tokens < 1:
            raise InvalidRequest("max_tokens: must be at least 1.", param="max_tokens")
        chat_body["max_tokens"] = max_tokens
    chat_body.update(_thinking(body.get("thinking")))
    chat_body.update(_tools(body.get("tools"), body.get("tool_choice")))
    _typed(body, "metadata", Mapping, None)  # accepted (user_id); nothing upstream takes it
    try:
        chat = openai_chat.parse_chat_request(chat_body)
    except InvalidRequest as exc:
        raise _in_messages_terms(exc, chat_body["messages"]) from None
    # Usage always: message_delta carries it, streamed or not.
    chat = dataclasses.replace(chat, include_usage=True)
    thinking = isinstance(body.get("thinking"), Mapping) and body["thinking"].get("type") in ("enabled", "adaptive")
    return MessagesRequest(chat, model.strip(), _stop_sequences(body.get("stop_sequences")), thinking, prefill)


_ASCII = re.compile(r"[\x00-\x7f]+")
_CHAT_FIELDS = ((".image_url.url", ".source.url"), (".file.file_data", ".source.data"))
_CHAT_PATH = re.compile(r"messages\[(\d+)\](?:\.content\[(\d+)\])?")


def _in_messages_terms(exc: InvalidRequest, messages: Sequence[Mapping[str, Any]]) -> InvalidRequest:
    """The chat parser's error, with its path (``messages[3].content[0]``) as the client's Messages path."""
    def where(found: re.Match[str]) -> str:
        message = messages[int(found.group(1))] if int(found.group(1)) < len(messages) else {}
        content = message.get("content")
        if found.group(2) is not None and isinstance(content, list) and int(found.group(2)) < len(content):
            return str(content[int(found.group(2))].get(WHERE) or found.group(0))
        return str(message.get(WHERE) or found.group(0))

    param = _CHAT_PATH.sub(where, exc.param) if exc.param else exc.param
    message = _CHAT_PATH.sub(where, exc.message)
    for chat_field, field in _CHAT_FIELDS:
        message = message.replace(chat_field, field)
    return InvalidRequest(message, code=exc.code, param=param)


def _typed(body: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidRequest(f"{key}: has the wrong type.", param=key)
    return value


def _stop_sequences(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        raise InvalidRequest("stop_sequences: must be an array of non-empty strings.", param="stop_sequences")
    if len(raw) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_SEQUENCE_CHARS for s in raw):
        raise InvalidRequest(f"stop_sequences: at most {MAX_STOP_SEQUENCES}, of at most "
                             f"{MAX_STOP_SEQUENCE_CHARS} characters each.", param="stop_sequences")
    return tuple(dict.fromkeys(raw))


def _system(raw: Any) -> list[dict[str, Any]]:
    """``system`` as one system message: a string, or text blocks (Claude Code sends blocks with cache_control)."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [{"role": "system", "content": raw}]
    if not isinstance(raw, list):
        raise InvalidRequest("system: must be a string or an array of text blocks.", param="system")
    texts = []
    for j, block in enumerate(raw):
        if not isinstance(block, Mapping) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest(f"system.{j}: must be a text block.", param=f"system.{j}")
        texts.append(block["text"])
    return [{"role": "system", "content": "\n\n".join(texts)}]


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages: must be a non-empty array.", param="messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
            raise InvalidRequest(f"{where}: must be an object with role 'user' or 'assistant'.", param=where)
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content, WHERE: where})
        elif isinstance(content, list):
            blocks = [_block(b, f"{where}.content.{j}") for j, b in enumerate(content)]
            translated = _assistant(blocks) if message["role"] == "assistant" else _user(blocks)
            out += [{**m, WHERE: where} for m in translated]
        else:
            raise InvalidRequest(f"{where}.content: must be a string or an array of blocks.",
                                 param=f"{where}.content")
    if not out:
        raise InvalidRequest("messages: no message has any content; send at least one text or media block.",
                             param="messages")
    return out


def _prefill(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """A last assistant message of plain text becomes a request to start the reply with it.

    The site takes one user message per turn and always answers anew, so the
    text is asked for in the last user message (whose media stay the newest)
    and taken off the answer again by ``anthropic_stream.EventTranslator``.
    """
    last = messages[-1]
    if last["role"] != "assistant" or last.get("tool_calls") or not last["content"].strip() or len(messages) < 2:
        return messages, ""
    prefill, rest = last["content"].rstrip(), messages[:-1]
    ask = f"Start your reply with exactly the following text, and continue it:\n{prefill}"
    before = rest[-1]
    if before["role"] != "user":
        return [*rest, {"role": "user", "content": ask}], prefill
    content = before["content"]
    content = f"{content}\n\n{ask}" if isinstance(content, str) else [*content, {"type": "text", "text": ask}]
    return [*rest[:-1], {**before, "content": content}], prefill


def _block(block: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
        raise InvalidRequest(f"{where}: must be an object with a 'type'.", param=where)
    return {**block, WHERE: where}


def _assistant(blocks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Text and ``tool_use`` blocks as one assistant message with ``tool_calls``; thinking is not history."""
    texts, calls = [], []
    for block in blocks:
        kind, where = block["type"], block[WHERE]
        if kind == "text":
            texts.append(_text_of(block, where))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise InvalidRequest(f"{where}: a tool_use block needs an 'id' and a 'name'.", param=where)
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": arguments}})
        elif kind not in _SKIPPED_BLOCKS:
            raise InvalidRequest(f"{where}: '{kind}' blocks are not supported in assistant messages; "
                                 "use text, tool_use or thinking.", param=where)
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _user(blocks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``tool_result`` blocks as tool messages, then the rest (and the results' images) as one user message."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if block["type"] == "tool_result":
            text, images = _tool_result(block, block[WHERE])
            results.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id") or ""), "content": text})
            parts += images  # the site sees images only in the newest user message
        elif block["type"] not in _SKIPPED_BLOCKS:
            parts.append(_part(block, block[WHERE]))
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _tool_result(block: Mapping[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    content = block.get("content")
    texts, images = [], []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, item in enumerate(content):
            inner = _block(item, f"{where}.content.{j}")
            part = _part(inner, inner[WHERE])
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
    elif content is not None:
        raise InvalidRequest(f"{where}.content: must be a string or an array of blocks.", param=f"{where}.content")
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = f"[the tool reported an error]\n{text}"
    return text, images


def _part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One user block as an OpenAI content part (text, image_url or file), tagged with its Messages path."""
    return {**_content_part(block, where), WHERE: where}


def _content_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": _text_of(block, where)}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _source_url(block.get("source"), where, "image")}}
    if kind == "document":
        return _document(block, where)
    raise InvalidRequest(f"{where}: '{kind}' blocks are not supported here; use text, image, document "
                         "or tool_result.", param=where)


def _text_of(block: Mapping[str, Any], where: str) -> str:
    if not isinstance(block.get("text"), str):
        raise InvalidRequest(f"{where}.text: must be a string.", param=f"{where}.text")
    return block["text"]


def _source_url(source: Any, where: str, kind: str) -> str:
    """A base64 or URL source as the data URL or URL the chat parser reads."""
    if not isinstance(source, Mapping):
        raise InvalidRequest(f"{where}.source: must be an object.", param=f"{where}.source")
    if source.get("type") == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str) or not data:
            raise InvalidRequest(f"{where}.source: a base64 source needs 'media_type' and 'data'.",
                                 param=f"{where}.source")
        return f"data:{media_type};base64,{data}"
    if source.get("type") == "url" and kind == "image":
        if not isinstance(source.get("url"), str):
            raise InvalidRequest(f"{where}.source.url: must be a string.", param=f"{where}.source.url")
        return source["url"]
    usable = "base64 or url" if kind == "image" else "base64, text or content"
    raise InvalidRequest(f"{where}.source: '{source.get('type')}' sources are not supported for {kind}s; "
                         f"use {usable}.", param=f"{where}.source")


def _document(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A PDF (base64) becomes an uploaded file; plain-text and content documents become text."""
    source = block.get("source")
    title = block.get("title") if isinstance(block.get("title"), str) else ""
    kind = source.get("type") if isinstance(source, Mapping) else None
    if kind == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": "\n".join(filter(None, [title, source["data"]]))}
    if kind == "content" and isinstance(source.get("content"), (str, list)):
        inner = source["content"]
        texts = [inner] if isinstance(inner, str) else [
            _text_of(b, f"{where}.source.content.{j}") for j, b in enumerate(inner) if isinstance(b, Mapping)]
        return {"type": "text", "text": "\n".join(filter(None, [title, *texts]))}
    url = _source_url(source, where, "document")
    media_type = str(source.get("media_type") or "")
    extension = "pdf" if media_type == "application/pdf" else "txt" if media_type.startswith("text/") else "bin"
    return {"type": "file", "file": {"file_data": url, "filename": title or f"document.{extension}"}}


def _thinking(raw: Any) -> dict[str, Any]:
    """``enabled`` (with its budget) and ``disabled`` as the chat request's switches; ``adaptive``: the site's Auto."""
    if raw is None:
        return {}
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    if kind == "disabled":
        return {"thinking": {"type": "disabled"}}
    if kind == "adaptive":
        return {}
    if kind == "enabled":
        budget = raw.get("budget_tokens")
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 0):
            raise InvalidRequest("thinking.budget_tokens: must be a non-negative integer.",
                                 param="thinking.budget_tokens")
        return {"thinking": {"type": "enabled"}, **({"thinking_budget": budget} if budget else {})}
    raise InvalidRequest("thinking.type: must be 'enabled', 'disabled' or 'adaptive'.", param="thinking")


def _tools(raw: Any, choice: Any) -> dict[str, Any]:
    """Custom tools as functions; the web search server tool switches on the site's search."""
    out: dict[str, Any] = {}
    if raw is not None:
        if not isinstance(raw, list):
            raise InvalidRequest("tools: must be an array.", param="tools")
        functions = []
        for n, tool in enumerate(raw):
            where = f"tools.{n}"
            if not isinstance(tool, Mapping):
                raise InvalidRequest(f"{where}: must be an object.", param=where)
            kind = tool.get("type")
            if isinstance(kind, str) and kind.startswith("web_search"):
                out["enable_search"] = True
                continue
            if kind not in (None, "custom"):
                raise InvalidRequest(f"{where}: the server tool '{kind}' is not available on Qwen; "
                                     "describe it as a custom tool with an input_schema.", param=where)
            functions.append({"type": "function", "function": {
                "name": tool.get("name"), "description": tool.get("description") or "",
                "parameters": tool.get("input_schema")}})
        out["tools"] = functions
    out.update(_tool_choice(choice))
    return out


def _tool_choice(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    forms = {"auto": "auto", "any": "required", "none": "none"}
    if isinstance(kind, str) and kind in forms:
        choice: Any = forms[kind]
    elif kind == "tool" and isinstance(raw.get("name"), str):
        choice = {"type": "function", "function": {"name": raw["name"]}}
    else:
        raise InvalidRequest("tool_choice: must be {\"type\": \"auto\"}, {\"type\": \"any\"}, "
                             "{\"type\": \"none\"} or {\"type\": \"tool\", \"name\": ...}.", param="tool_choice")
    out: dict[str, Any] = {"tool_choice": choice}
    if raw.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


# --------------------------------------------------------------------------- count_tokens


def prompt_text(chat: openai_chat.ChatRequest, max_messages: int) -> str:
    """The text a fresh upstream chat would receive for this request: history, tool descriptions and rules."""
    return tool_prompts.compose_turn(chat.agent, openai_chat.flatten_messages(chat.messages, max_messages), True)


def estimate_tokens(text: str, media: Sequence[Any] = ()) -> int:
    """An estimate of Qwen's token count for ``text`` and the turn's media; there is no tokenizer here.

    Qwen's vocabulary takes about four characters of English or code per
    token and about one token per CJK character, so: ASCII characters / 4,
    plus one token per other character. Images count ``IMAGE_TOKENS`` each
    (the site resizes them); documents one token per
    ``DOCUMENT_BYTES_PER_TOKEN`` bytes of file.
    """
    other = 0 if text.isascii() else len(_ASCII.sub("", text))  # C-speed on Claude Code's long prompts
    tokens = math.ceil((len(text) - other) / 4) + other
    for part in media:
        if part.kind == "image":
            tokens += IMAGE_TOKENS
        else:
            tokens += math.ceil(len(part.data or part.source) / DOCUMENT_BYTES_PER_TOKEN)
    return max(1, tokens)
