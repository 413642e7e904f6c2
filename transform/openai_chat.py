"""Pure translation between the OpenAI chat API and the Qwen web protocol.

No I/O, no clock and no randomness here: ids and timestamps are passed in, so
every function can be tested as a table of inputs and outputs. The Qwen shapes
follow ``qwen-web-protocol.md`` (sections cited at each function). This is the
request side (models, request parsing, the turn's payload); the answer side,
events to chunks, is ``transform.answer``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from errors import InvalidRequest, ModelNotFound, echo
from transform import tool_prompts
from transform.media_parts import MediaPart, check_turn, decode_inline, place_media, split_content

# --------------------------------------------------------------------------- models

THINKING_SUFFIX, FAST_SUFFIX, SEARCH_SUFFIX = "-thinking", "-fast", "-search"
#: Generation variants (suffix, the site's chat type); served by ``transform.generation`` and ``routes.images_videos`` (§8).
MEDIA_SUFFIXES = (("-image", "t2i"), ("-image_edit", "image_edit"), ("-video", "t2v"))
MEDIA_SUFFIX_ALIASES = (("-image-edit", "image_edit"),)  # accepted, not listed
#: OpenAI model names that clients send by default; they map to the default model.
OPENAI_ALIASES = frozenset({
    "gpt-3.5-turbo", "gpt-4", "gpt-4-turbo", "gpt-4o", "gpt-4o-mini",
    "gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini", "o3-mini", "o4-mini",
})


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the proxy needs to know of one upstream model (§3.2)."""

    id: str
    name: str = ""
    created: int = 0
    thinking: bool = False
    search: bool = False
    vision: bool = False
    #: Generation chat types the model offers (``t2i``, ``image_edit``, ``t2v``), from its ``chat_type`` list.
    generates: frozenset[str] = frozenset()
    #: Whether the site lets thinking be turned off (``info.meta.think_skip.enable``); qwen3.8 models refuse (§14).
    think_skip: bool = True


#: Served by ``/v1/models`` only when the site's list cannot be fetched.
BUILTIN_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("qwen3.7-plus", "Qwen3.7-Plus", thinking=True, search=True, vision=True,
              generates=frozenset({"t2i", "image_edit", "t2v"})),  # as in the models fixture
    ModelInfo("qwen3.8-max", "Qwen3.8-Max", thinking=True, search=True, vision=True, think_skip=False),
    ModelInfo("qwen3.7-max", "Qwen3.7-Max", thinking=True, search=True, vision=True),
    ModelInfo("qwen3.6-plus", "Qwen3.6-Plus", thinking=True, search=True, vision=True),
    ModelInfo("qwen3.5-plus", "Qwen3.5-Plus", thinking=True, search=True, vision=True),
    ModelInfo("qwen3.5-omni-plus", "Qwen3.5-Omni-Plus", vision=True),
)


def parse_upstream_models(payload: Any) -> list[ModelInfo]:
    """Read either model-list envelope: ``{"data": [...]}`` or ``{"data": {"data": [...]}}`` (§3.1)."""
    data = payload.get("data") if isinstance(payload, Mapping) else None
    if isinstance(data, Mapping):
        data = data.get("data")
    if not isinstance(data, list):
        raise ValueError("model list has no data array")
    models = []
    for item in data:
        if isinstance(item, Mapping) and isinstance(item.get("id"), str) and item["id"]:
            models.append(_model_info(item))
    if not models:
        raise ValueError("model list is empty")
    return models


def _model_info(item: Mapping[str, Any]) -> ModelInfo:
    info = item.get("info") if isinstance(item.get("info"), Mapping) else {}
    meta = info.get("meta") if isinstance(info.get("meta"), Mapping) else {}
    caps = meta.get("capabilities") if isinstance(meta.get("capabilities"), Mapping) else {}
    abilities = meta.get("abilities") if isinstance(meta.get("abilities"), Mapping) else {}
    chat_types = meta.get("chat_type") if isinstance(meta.get("chat_type"), list) else []
    created = info.get("created_at") or item.get("created") or 0

    def able(name: str) -> bool:
        # abilities are integers (1, 2, 3 seen), capabilities booleans.
        return bool(abilities.get(name)) or caps.get(name) is True

    return ModelInfo(
        id=item["id"],
        name=str(item.get("name") or info.get("name") or item["id"]),
        created=int(created) if isinstance(created, (int, float)) else 0,
        thinking=able("thinking"),
        search="search" in chat_types or caps.get("search") is True,
        vision=able("vision"),
        generates=frozenset(kind for _, kind in MEDIA_SUFFIXES if kind in chat_types),
        think_skip=_think_skip(meta),
    )


def _think_skip(meta: Mapping[str, Any]) -> bool:
    """Only an explicit ``think_skip: {"enable": false}`` forbids thinking off; older lists lack the key."""
    think_skip = meta.get("think_skip")
    return not (isinstance(think_skip, Mapping) and think_skip.get("enable") is False)


def model_variants(model: ModelInfo) -> list[str]:
    """The ids this proxy exposes for one upstream model (§3.3)."""
    ids = [model.id]
    modes = [] if not model.thinking else [THINKING_SUFFIX, FAST_SUFFIX] if model.think_skip else [THINKING_SUFFIX]
    ids += [model.id + m for m in modes]
    if model.search:
        ids += [model.id + SEARCH_SUFFIX] + [model.id + m + SEARCH_SUFFIX for m in modes]
    ids += [model.id + suffix for suffix, kind in MEDIA_SUFFIXES if kind in model.generates]
    return ids


def openai_model_list(models: Iterable[ModelInfo]) -> list[dict[str, Any]]:
    """``/v1/models`` entries, variants included."""
    return [
        {"id": vid, "object": "model", "created": m.created, "owned_by": "qwen"}
        for m in models
        for vid in model_variants(m)
    ]


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """A requested model id resolved to an upstream model and its modes."""

    upstream: ModelInfo
    thinking: bool | None = None  # None: the site's Auto gear
    search: bool = False


def resolve_model(requested: str, models: Sequence[ModelInfo], default_model: str = "") -> ModelChoice:
    """Map a client's model id (with suffixes or an OpenAI alias) to an upstream model."""
    by_id = {m.id.lower(): m for m in models}
    name = requested.strip().lower()
    if name in OPENAI_ALIASES:
        name = (default_model or models[0].id).lower()
        if name not in by_id:
            raise ModelNotFound(f"The default model '{default_model}' is not offered by the site.", param="model")
    if name in by_id:
        return ModelChoice(by_id[name])
    base, search, thinking = name, False, None
    if base.endswith(SEARCH_SUFFIX):
        base, search = base[: -len(SEARCH_SUFFIX)], True
    for suffix, value in ((THINKING_SUFFIX, True), (FAST_SUFFIX, False)):
        if base.endswith(suffix):
            base, thinking = base[: -len(suffix)], value
            break
    model = by_id.get(base)
    if model is not None and thinking is False and model.thinking and not model.think_skip:
        # A "-fast" id from an older model list: this model refuses thinking off (§14); it runs in Auto.
        thinking, name = None, base + (SEARCH_SUFFIX if search else "")
    if model is None or name not in {v.lower() for v in model_variants(model)}:
        raise _model_not_found(requested, models)
    return ModelChoice(model, thinking=thinking, search=search)


def vision_fallback(choice: ModelChoice, models: Sequence[ModelInfo], fallback: str) -> ModelChoice | None:
    """For a turn with images on a model that cannot see: ``VISION_FALLBACK_MODEL``, with the same modes.

    ``None`` when the chosen model can see. Without a usable fallback the
    client gets a 400 naming the models that can, never an answer given blind.
    """
    if choice.upstream.vision:
        return None
    seeing = ", ".join(m.id for m in models if m.vision) or "none is offered right now"
    target = None
    if fallback:
        try:
            target = resolve_model(fallback, models)
        except ModelNotFound:
            target = None
    if target is None or not target.upstream.vision:
        said = f"; VISION_FALLBACK_MODEL '{fallback}' is not a vision model of the site" if fallback else ""
        raise InvalidRequest(
            f"The model '{choice.upstream.id}' cannot see images{said}. Use a vision model: {seeing}.",
            param="model", code="model_without_vision",
        )
    return ModelChoice(
        target.upstream,
        thinking=target.thinking if target.thinking is not None else choice.thinking,
        search=target.search or (choice.search and target.upstream.search),
    )


def _model_not_found(requested: str, models: Sequence[ModelInfo]) -> ModelNotFound:
    examples = ", ".join(v for m in models[:3] for v in model_variants(m)[:2])
    return ModelNotFound(
        f"The model '{echo(requested)}' does not exist. Try one of: {examples} "
        "(GET /v1/models lists them all).",
        param="model",
    )


# --------------------------------------------------------------------------- requests

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_THINK_TAGS = (("/no_think", False), ("/think", True))  # Cherry Studio appends " /think"
_EFFORT_OFF = frozenset({"none", "minimal"})


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A validated ``/v1/chat/completions`` body, reduced to what the site can use."""

    model: str
    messages: tuple[tuple[str, str], ...]  # (role, text)
    stream: bool = False
    include_usage: bool = False
    thinking: bool | None = None  # explicit request; None = not asked
    thinking_budget: int | None = None
    search: bool = False
    max_tokens: int | None = None
    media: tuple[MediaPart, ...] = ()  # the newest user message's images, files, audio, video
    agent: tool_prompts.AgentSpec | None = None  # tools and/or a JSON response_format


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate an OpenAI chat body; raise ``InvalidRequest`` naming the bad field."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    names = tool_prompts.call_names(raw_messages)
    messages, media = place_media([_parse_message(i, m, names) for i, m in enumerate(raw_messages)])
    check_turn(media)
    if not any(role == "user" for role, _ in messages):
        raise InvalidRequest("'messages' must contain at least one user message.", param="messages")
    stream = _optional(body, "stream", bool, False)
    options = _optional(body, "stream_options", Mapping, None) or {}
    n = _optional(body, "n", int, 1)
    if n != 1:
        raise InvalidRequest("Only n=1 is supported: the site returns one answer per turn.", param="n")
    agent = tool_prompts.parse_agent_spec(body)
    messages, tag = _strip_think_tags(messages)
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=bool(stream and options.get("include_usage")),
        thinking=tag if tag is not None else _thinking_flag(body),
        thinking_budget=_thinking_budget(body),
        search=_wants_search(body),
        max_tokens=_max_tokens(body),
        media=tuple(decode_inline(part) for part in media),
        agent=agent,
    )


def _optional(body: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        wanted = {bool: "a boolean", int: "an integer", Mapping: "an object"}.get(kind, kind.__name__)
        raise InvalidRequest(f"'{key}' must be {wanted}, not {_json_type(value)}.", param=key)
    return value


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages that say what was sent instead."""
    for kind, name in ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"),
                       (Mapping, "an object")):
        if isinstance(value, kind):
            return name
    return "null"


def _parse_message(index: int, message: Any, call_names: Mapping[str, str]) -> tuple[str, str, tuple[MediaPart, ...]]:
    param = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise InvalidRequest(f"{param} must be an object.", param=param)
    role = message.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise InvalidRequest(f"{param}.role must be one of {', '.join(sorted(_ROLES))}.", param=f"{param}.role")
    text, media = split_content(message.get("content"), f"{param}.content")
    if role == "assistant" and message.get("tool_calls"):
        text = tool_prompts.fold_assistant(text, message["tool_calls"])
    if role in {"tool", "function"}:
        call_id = str(message.get("tool_call_id") or "")
        name = str(message.get("name") or call_names.get(call_id, ""))
        return ("tool", tool_prompts.fold_tool_result(name, call_id, text), media)
    return ("system" if role == "developer" else role, text, media)


def _strip_think_tags(messages: tuple[tuple[str, str], ...]) -> tuple[tuple[tuple[str, str], ...], bool | None]:
    """Remove Cherry Studio's trailing ``/think`` / ``/no_think``; the last user message's tag wins."""
    result, flag = [], None
    for role, text in messages:
        if role == "user":
            tagged = _think_tag(text)
            if tagged is not None:
                text, flag = tagged
            elif flag is not None:
                flag = None  # a later user turn without a tag: no explicit request
        result.append((role, text))
    return tuple(result), flag


def _think_tag(text: str) -> tuple[str, bool] | None:
    """``text`` without a trailing ``/think`` or ``/no_think`` (after whitespace or alone), and which it was.

    String methods, not a regular expression: a search for "whitespace, then the
    tag" backtracks quadratically over a long run of spaces (a frozen worker).
    """
    body = text.rstrip()
    for tag, value in _THINK_TAGS:
        if body.endswith(tag):
            head = body[: -len(tag)]
            if not head or head[-1].isspace():
                return head.rstrip(), value
    return None


def _thinking_flag(body: Mapping[str, Any]) -> bool | None:
    for key in ("enable_thinking", "thinking"):
        value = body.get(key)
        if isinstance(value, bool):
            return value
        if isinstance(value, Mapping) and value.get("type") in ("enabled", "disabled"):
            return value["type"] == "enabled"
    effort = body.get("reasoning_effort")
    if isinstance(effort, str):
        return effort.lower() not in _EFFORT_OFF
    budget = _thinking_budget(body)
    if budget is not None:
        return budget > 0
    return None


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = _optional(body, key, int, None)
        if value is not None:
            if value < 1:
                raise InvalidRequest(f"'{key}' must be at least 1.", param=key)
            return value
    return None


def _thinking_budget(body: Mapping[str, Any]) -> int | None:
    value = body.get("thinking_budget")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest("'thinking_budget' must be a non-negative integer.", param="thinking_budget")
    return value


def _wants_search(body: Mapping[str, Any]) -> bool:
    if body.get("web_search_options") is not None or body.get("enable_search") is True:
        return True
    tools = body.get("tools")
    return isinstance(tools, list) and any(
        isinstance(t, Mapping) and t.get("type") in ("web_search", "web_search_preview") for t in tools
    )


def flatten_messages(messages: Sequence[tuple[str, str]], max_messages: int) -> str:
    """Fold system prompt and history into the one user message the site accepts (§5.3).

    A lone user message goes as it is. Otherwise every message is wrapped in a
    tag named after its role, so the model can tell turns apart; tool results
    are already ``<tool_response>`` blocks. System text is always kept and only
    the newest ``max_messages`` other messages are.
    """
    system = [text for role, text in messages if role == "system" and text]
    turns = [(role, text) for role, text in messages if role != "system"][-max_messages:]
    if not system and len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1]
    parts = [f"<system>\n{text}\n</system>" for text in system]
    parts += [text if role == "tool" else f"<{role}>\n{text}\n</{role}>" for role, text in turns]
    return "\n".join(parts)


def feature_config(thinking: bool | None, search: bool, budget: int | None = None) -> dict[str, Any]:
    """The message's ``feature_config`` for one of the web UI's three thinking gears (§5.2)."""
    config: dict[str, Any] = {"output_schema": "phase", "research_mode": "normal", "auto_search": search}
    if thinking is False:
        config.update(thinking_enabled=False, auto_thinking=False, thinking_mode="Fast")
    else:
        config.update(
            thinking_enabled=True,
            auto_thinking=thinking is None,
            thinking_mode="Auto" if thinking is None else "Thinking",
            thinking_format="summary",
        )
        if budget:
            config["thinking_budget"] = budget
    return config


def resolve_thinking(choice: ModelChoice, request: ChatRequest) -> bool | None:
    """An explicit request wins over the model suffix; models that cannot think never do.

    Thinking off on a model that refuses it (``think_skip`` off, §14) becomes
    Auto, the gear nearest to it: the site would fail the turn instead.
    """
    if not choice.upstream.thinking:
        return False
    wanted = request.thinking if request.thinking is not None else choice.thinking
    return None if wanted is False and not choice.upstream.think_skip else wanted


def new_chat_payload(model: str, chat_type: str, timestamp_ms: int) -> dict[str, Any]:
    """Body of ``POST /api/v2/chats/new`` as the web app sends it (§4, §14: front-end 0.2.81, no ``title``)."""
    return {
        "chatId": "", "models": [model], "project_id": "", "chat_type": chat_type, "chat_mode": "normal",
        "timestamp": timestamp_ms,
    }


def completion_payload(
    *,
    model: str,
    chat_id: str,
    content: str,
    chat_type: str,
    config: Mapping[str, Any],
    fid: str,
    timestamp: int,
    parent_id: str | None = None,
    files: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Body of ``POST /api/v2/chat/completions``: exactly one user message, with its uploads (§5.1, §7.4)."""
    message = {
        "id": None, "fid": fid, "parentId": parent_id, "parent_id": parent_id, "childrenIds": [],
        "role": "user", "content": content, "user_action": "chat", "files": [dict(f) for f in files],
        "timestamp": timestamp, "models": [model], "model": "",
        "chat_type": chat_type, "sub_chat_type": chat_type, "extra": {"meta": {"subChatType": chat_type}},
        "feature_config": dict(config),
    }
    return {
        "stream": True, "version": "2.1", "incremental_output": True,
        "chat_id": chat_id, "chatId": chat_id, "parent_id": parent_id, "parentId": parent_id or "",
        "chat_mode": "normal", "model": model, "messages": [message], "timestamp": timestamp,
    }
