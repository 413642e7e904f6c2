"""The wire side of the fake chat.qwen.ai: what the site's bytes look like, as pure functions.

What this module owns: everything :mod:`tests.fake_qwen` sends or reads that does
not depend on the site's state — the JWT shape (``make_jwt``, claim decoding), the
model objects (``DEFAULT_MODELS``), the JSON envelopes and HTTP replies (``ok_response``,
``fail_response``, ``detail_response``), the request fields it reads (credentials, message text,
fault ids), the record shapes (profile, chat rows and detail, history messages),
the fault catalogue (``FAULTS``: ready replies, the x5sec body, WAF and gateway
pages, in-stream error frames), the completion events (``turn_events`` and its
phases with cumulative usage) and the SSE framing (``sse_frame``, ``_split_frame``,
``StreamWriter``).

Nothing here holds state, serves, or routes: werkzeug is used only for its
``Request`` and ``Response`` values, and scenario switches arrive through the
structural :class:`_Switches`, so this module never imports the server side.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Protocol

from werkzeug.wrappers import Request, Response

SITE = "https://chat.qwen.ai"
EXPIRED_DETAILS = "Token has expired, please log in again."
QUOTA_DETAILS = "今日生图额度已用完，登录后可继续生图。"
INVALID_INPUT_DETAILS = "输入或附件无效。请检查后重试。"
INSPECTION_DETAILS = "内容安全警告：输入数据可能包含不适当的内容！"
INTERNAL_DETAILS = "Internal error..."
LINE_ENDINGS = ("\n", "\r\n", "\r")
COALESCE_EVENTS = 3

Payload = dict | str | bytes  # dict → data: JSON, str → data: verbatim, bytes → raw write


class _Switches(Protocol):
    """The Scenario fields the wire side reads (tests.fake_qwen.Scenario satisfies it)."""

    answer: str
    reply: Callable[[str], str] | None
    thinking: list[str]
    thinking_titles: list[str]
    thinking_style: str
    search_results: list[dict]
    chunk_chars: int
    content_mode: str
    usage_input_tokens: int
    rate_limit_hours: int
    send_done: bool
    line_ending: str
    split_writes: bool
    coalesce: bool
    keepalive_comments: bool
    first_token_delay: float
    chunk_delay: float


# ---------------------------------------------------------------- JWT


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def make_jwt(user_id: str = "fake-user-0001", exp: int | None = None, *, ttl: int = 30 * 86400) -> str:
    """An HS256-shaped token with the site's three payload keys and an obviously fake signature."""
    expires = int(time.time()) + ttl if exp is None else int(exp)
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {"id": user_id, "last_password_change": expires - ttl, "exp": expires}
    parts = [json.dumps(header, separators=(",", ":")), json.dumps(payload, separators=(",", ":"))]
    return ".".join([_b64url(p.encode()) for p in parts] + [_b64url(b"fake-signature")])


def decode_jwt(token: str) -> dict | None:
    """Claims without a signature check (peers do the same); None when not a JWT with id and exp."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("id"), str):
        return None
    if not isinstance(claims.get("exp"), (int, float)):
        return None
    return claims


# ---------------------------------------------------------------- models


def _model(model_id: str, name: str, meta: dict, created_at: int | None) -> dict:
    """One upstream model object in the 2026 shape (fixture models-v2-response.json)."""
    info: dict[str, Any] = {"id": model_id, "user_id": "7a1c2f4e-93b0-4d0e-8c55-2b1f6a9e0d31",
                            "base_model_id": None, "name": name}
    if created_at is not None:
        info["created_at"] = created_at
    info.update({"meta": meta, "is_active": True, "is_visitor_active": True})
    return {"id": model_id, "name": name, "object": "model", "owned_by": "qwen", "info": info,
            "preset": True, "action_ids": []}


_FULL_CHAT_TYPES = ["t2t", "t2v", "t2i", "image_edit", "search", "artifacts", "web_dev",
                    "deep_research", "travel", "learn", "slides"]
_MCP = ["image-generation", "code-interpreter", "amap", "fire-crawl"]

DEFAULT_MODELS: list[dict] = [
    _model("qwen3.7-plus", "Qwen3.7-Plus", {
        "description": "Qwen3.7-Plus is a high-performance large language model...",
        "capabilities": {"vision": True, "document": True, "video": True, "audio": True,
                         "thinking": True, "search": True},
        "short_description": "The high-performance large language model in the Qwen3.7 series...",
        "max_context_length": 1000000, "max_summary_generation_length": 65536,
        "abilities": {"vision": 1, "document": 1, "video": 1, "audio": 1, "mcp": 1,
                      "thinking": 3, "parse_url": 2},
        "auto_thinking": True, "auto_search": True, "thinking_format": "summary",
        "chat_type": list(_FULL_CHAT_TYPES), "mcp": list(_MCP),
        "modality": ["text", "image", "video"], "think_skip": {"enable": True}}, 1784764800),
    _model("qwen3.8-max", "Qwen3.8-Max", {
        "description": "Qwen3.8-Max is the most capable model of the Qwen3.8 series...",
        "capabilities": {"vision": False, "document": True, "citations": True, "thinking": True,
                         "thinking_budget": True, "search": True},
        "short_description": "The most powerful language model in the Qwen series.",
        "max_context_length": 1000000, "max_generation_length": 65536,
        "max_thinking_generation_length": 81920, "max_summary_generation_length": 32768,
        "abilities": {"document": 1, "mcp": 1, "citations": 1, "thinking_budget": 1, "thinking": 1},
        "auto_thinking": True, "auto_search": True, "thinking_format": "summary",
        "chat_type": ["t2t", "search", "artifacts", "web_dev", "deep_research"], "mcp": list(_MCP),
        "modality": ["text"], "think_skip": {"enable": False}}, None),  # qwen3.8 refuses thinking off (§14)
    _model("qwen3.5-omni-plus", "Qwen3.5-Omni-Plus", {
        "description": "Qwen3.5-Omni-Plus understands text, images, audio and video...",
        "capabilities": {"vision": True, "document": True, "video": True, "audio": True},
        "short_description": "The omni-modal model of the Qwen3.5 series.",
        "max_generation_length": 32768,
        "abilities": {"vision": 1, "document": 1, "video": 1, "audio": 1},
        "chat_type": ["t2t", "artifacts"], "modality": ["text", "image", "video", "audio"]}, None),
    _model("qwen3-coder-plus", "Qwen3-Coder", {
        "description": "Qwen3-Coder is a strong coding agent model...",
        "capabilities": {"document": True, "citations": True, "search": True},
        "short_description": "Strong coding and agent capabilities.",
        "max_context_length": 1048576, "max_generation_length": 65536,
        "abilities": {"document": 1, "citations": 1, "mcp": 1},
        "chat_type": ["t2t", "search", "artifacts", "web_dev"], "mcp": ["code-interpreter"],
        "modality": ["text"]}, 1753920000),
]


def model_records(chosen: list[dict] | None) -> list[dict]:
    """A private copy of the scenario's model list, or of DEFAULT_MODELS when it sets none."""
    return copy.deepcopy(chosen if chosen is not None else DEFAULT_MODELS)


def model_meta(models: list[dict], model_id: str) -> dict | None:
    for model in models:
        if model.get("id") == model_id:
            return model.get("info", {}).get("meta", {})
    return None


# ---------------------------------------------------------------- envelopes and replies


def _dumps(obj: Any) -> str:
    """The site's own serialisation: Python defaults (", " and ": "), raw UTF-8."""
    return json.dumps(obj, ensure_ascii=False)


def new_request_id() -> str:
    return str(uuid.uuid4())


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_dumps(obj).encode(), status=status, headers=dict(headers or {}),
                    content_type="application/json")


def ok_response(data: Any) -> Response:
    return json_response({"success": True, "request_id": new_request_id(), "data": data})


def fail_body(code: str, details: str, **extra: Any) -> dict:
    return {"success": False, "request_id": new_request_id(), "data": {"code": code, "details": details, **extra}}


def fail_response(code: str, details: str, actual_status: int | None = None, **extra: Any) -> Response:
    """HTTP 200 business error; x-actual-status-code only where it was measured."""
    headers = {"x-actual-status-code": str(actual_status)} if actual_status else None
    return json_response(fail_body(code, details, **extra), headers=headers)


def detail_response(status: int, detail: str) -> Response:
    return json_response({"detail": detail}, status=status)


def _text(body: str, status: int, content_type: str) -> Response:
    return Response(body.encode(), status=status, content_type=content_type)


def json_text_response(text: str, status: int = 200) -> Response:
    return Response(text.encode(), status=status, content_type="application/json")


# ---------------------------------------------------------------- fault bodies


def x5sec_body(seed: str) -> str:
    """The risk-control refusal (fixture completions-x5sec-rgv587.json) with opaque values filled in."""
    digest = hashlib.sha512(seed.encode()).digest()
    data = _b64url(digest + hashlib.sha512(digest).digest()).replace("-", "x").replace("_", "Q")
    target = "chat.qwen.ai%3A443%2Fapi%2Fv2%2Fchat%2Fcompletions"
    body = {"ret": ["FAIL_SYS_USER_VALIDATE", f"RGV587_ERROR::SM::{digest.hex()[:32]}"],
            "data": {"url": f"{SITE}/_____tmd_____/punish?x5secdata={data}__bx__{target}&x5step=1"}}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _waf_page(trace_id: str) -> str:
    """A synthetic ~16 KiB Aliyun WAF slider challenge, minified like the real one (§1.4)."""
    seed = hashlib.sha256(trace_id.encode()).hexdigest()
    head = (
        '<!doctypehtml><html lang="zh-cn"><head><meta charset="utf-8">'
        '<meta name="viewport"content="width=device-width,initial-scale=1">'
        f'<meta name="aliyun_waf_aa"content="{seed[:32]}"><meta name="aliyun_waf_bb"content="{seed[32:]}">'
        "<title>Access Verification</title><style>body{margin:0;font-family:Arial,sans-serif;background:#f4f5f7}"
        ".wrap{width:420px;margin:120px auto;padding:32px;background:#fff;border-radius:8px}"
        "#aliyunCaptcha-sliding-wrapper{height:40px;background:#e8e8e8}.slider{width:40px;height:40px}"
        "</style></head><body><div class=\"wrap\"><h2>安全验证</h2><p>Please slide to verify</p>"
        '<div id="aliyunCaptcha-element"><div id="aliyunCaptcha-sliding-wrapper"><div class="slider"></div>'
        f'</div></div><p class="trace">TraceID: {trace_id}</p></div>'
        '<script src="https://o.alicdn.com/captcha-frontend/aliyunCaptcha/AliyunCaptcha.js"></script><script>'
        'window.initAliyunCaptcha({SceneId:"1ef0k9lq",prefix:"x7fw2a",mode:"embed",'
        'element:"#aliyunCaptcha-element",button:"#aliyunCaptcha-btn",captchaVerifyCallback:_v,'
        'onBizResultCallback:_r,slideStyle:{width:360,height:40},language:"cn"});var _0x=['
    )
    chunks: list[str] = []
    size = len(head)
    block = seed
    while size < 16 * 1024 - 200:
        block = hashlib.sha256(block.encode()).hexdigest()
        chunks.append(f'"{block}"')
        size += len(block) + 3
    tail = '];function _v(p){return _0x.length>0}function _r(b){b&&location.reload()}</script></body></html>'
    return head + ",".join(chunks) + tail


# The start of the page is the fixture signin-v1-405-page.partial.html verbatim; the tail closes it.
_GATEWAY_405_PAGE = (
    '<!doctypehtml><html lang="zh-cn"><meta charset="utf-8"><meta http-equiv="X-UA-Compatible"'
    'content="IE=edge,chrome=1"><meta name="data-spm"content="a3c0e"><title>405</title><style>a,body,div,h2,'
    "html,p{margin:0;padding:0}a{text-decoration:none;color:#3b6ea3}.container{width:1000px;margin:auto;"
    "color:#696969}.header{padding:110px 0}.header .message{height:36px;padding-left:120px;background:url("
    "https://errors.aliyun.com/images/TB1TpamHpXXXXaJXXXXeB7nYVXX-104-162.png) no-repeat 0 -128px;line-height:"
    "36px}.main{padding:50px 0;background:#f4f5f7}#block_image{position:relative;left:120px}</style><body "
    'data-spm="7663354"><div data-spm="1998410538"><div class="header"><div class="container"><div class='
    '"message"><div id="block_message"></div><div><span id="block_url_tips"></span><strong id="url"></strong>'
    '</div><div><span id="block_time_tips"></span><strong id="time"></strong></div><div><span id='
    '"block_traceid_tips"></span><strong id="traceid"></strong></div></div></div></div><div class='
    '"main"><div class="container"><img id="block_image"src="https://errors.aliyun.com/images/'
    'TB1iBJNHpXXXXbhXpXXXXXXXXXX-300-150.png"></div></div></div></body></html>'
)


# ---------------------------------------------------------------- stream events


def created_event(chat_id: str, parent_id: str, response_id: str) -> dict:
    return {"response.created": {"chat_id": chat_id, "parent_id": parent_id,
                                 "response_id": response_id, "response_index": "0"}}


@dataclass
class TurnRecord:
    """Everything one completion stream needs, fixed when the request is accepted."""

    chat_id: str
    parent_fid: str
    response_id: str
    query: str
    answer: str
    thinking: list[str]
    titles: list[str]
    thinking_style: str
    search_results: list[dict]
    chunk_chars: int
    cumulative: bool
    with_phase: bool
    input_tokens: int


class _Usage:
    """Cumulative usage as the site reports it (fixture: text_tokens equals output_tokens)."""

    def __init__(self, input_tokens: int) -> None:
        self.input_tokens = input_tokens
        self.reasoning_chars = 0
        self.answer_chars = 0

    def snapshot(self) -> dict:
        reasoning = (self.reasoning_chars + 3) // 4
        output = reasoning + (self.answer_chars + 3) // 4
        return {"input_tokens": self.input_tokens, "output_tokens": output, "characters": 0,
                "total_tokens": self.input_tokens + output,
                "input_tokens_details": {"text_tokens": self.input_tokens},
                "output_tokens_details": {"reasoning_tokens": reasoning, "text_tokens": output},
                "prompt_tokens_details": {"cached_tokens": 0}}


def _delta(turn: TurnRecord, delta: dict, usage: _Usage | None) -> dict:
    if not turn.with_phase:
        delta = {k: v for k, v in delta.items() if k != "phase"}
    event: dict[str, Any] = {"choices": [{"delta": delta}], "response_id": turn.response_id}
    if usage is not None:
        event["usage"] = usage.snapshot()
        event["timestamp"] = int(time.time())
    return event


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def _summary_events(turn: TurnRecord, usage: _Usage) -> Iterator[dict]:
    """thinking_summary snapshots: every event repeats all text so far (§6.3)."""
    done_chars = 0
    for index, paragraph in enumerate(turn.thinking):
        step = max(1, min(turn.chunk_chars * 4, (len(paragraph) + 1) // 2))
        for end in list(range(step, len(paragraph), step)) + [len(paragraph)]:
            usage.reasoning_chars = done_chars + end
            extra: dict[str, Any] = {}
            titles = turn.titles[:index + 1]
            if titles:
                extra["summary_title"] = {"content": list(titles)}
            extra["summary_thought"] = {"content": turn.thinking[:index] + [paragraph[:end]]}
            yield _delta(turn, {"role": "assistant", "content": "", "phase": "thinking_summary",
                                "extra": extra, "status": "typing"}, usage)
        done_chars += len(paragraph)
    yield _delta(turn, {"role": "assistant", "content": "", "phase": "thinking_summary",
                        "status": "finished"}, None)


def _think_events(turn: TurnRecord, usage: _Usage) -> Iterator[dict]:
    """The older ``think`` phase: reasoning text in delta.content."""
    text = "\n\n".join(turn.thinking)
    sent = ""
    for piece in _pieces(text, turn.chunk_chars):
        sent += piece
        usage.reasoning_chars = len(sent)
        yield _delta(turn, {"role": "assistant", "content": sent if turn.cumulative else piece,
                            "phase": "think", "status": "typing"}, usage)
    yield _delta(turn, {"role": "assistant", "content": "", "phase": "think", "status": "finished"}, None)


def _search_events(turn: TurnRecord, usage: _Usage) -> Iterator[dict]:
    call = {"name": "web_search", "arguments": _dumps({"query": turn.query[:100]})}
    extra = {"web_search_info": copy.deepcopy(turn.search_results), "display_position": "think"}
    yield _delta(turn, {"role": "assistant", "content": "", "phase": "web_search", "status": "typing",
                        "function_call": call, "extra": extra}, usage)
    yield _delta(turn, {"role": "assistant", "content": "", "phase": "web_search", "status": "finished",
                        "extra": copy.deepcopy(extra)}, usage)


def _answer_events(turn: TurnRecord, usage: _Usage, limit: int | None = None) -> Iterator[dict]:
    sent = ""
    for piece in _pieces(turn.answer, turn.chunk_chars)[:limit]:
        sent += piece
        usage.answer_chars = len(sent)
        yield _delta(turn, {"role": "assistant", "content": sent if turn.cumulative else piece,
                            "phase": "answer", "status": "typing"}, usage)


def turn_events(turn: TurnRecord, thinking_on: bool, search_on: bool) -> Iterator[dict]:
    """The whole normal t2t stream (§6.2), produced lazily."""
    usage = _Usage(turn.input_tokens)
    yield created_event(turn.chat_id, turn.parent_fid, turn.response_id)
    if thinking_on and turn.thinking:
        style = _summary_events if turn.thinking_style == "summary" else _think_events
        yield from style(turn, usage)
    if search_on and turn.search_results:
        yield from _search_events(turn, usage)
    yield from _answer_events(turn, usage)
    yield _delta(turn, {"content": "", "role": "assistant", "status": "finished", "phase": "answer"}, None)


def new_turn(scenario: _Switches, chat_id: str, message: dict, with_phase: bool) -> TurnRecord:
    """Fixes one completion stream when the request is accepted (the reply hook runs here, once)."""
    query = message_text(message.get("content"))
    return TurnRecord(chat_id=chat_id, parent_fid=str(message.get("fid") or new_request_id()), response_id=new_request_id(),
                 query=query, answer=scenario.reply(query) if scenario.reply else scenario.answer,
                 thinking=list(scenario.thinking), titles=list(scenario.thinking_titles),
                 thinking_style=scenario.thinking_style, search_results=list(scenario.search_results),
                 chunk_chars=scenario.chunk_chars, cumulative=scenario.content_mode == "cumulative",
                 with_phase=with_phase, input_tokens=scenario.usage_input_tokens)


def turn_switches(features: dict, meta: dict | None, chat_type: Any) -> tuple[bool, bool]:
    """(thinking_on, search_on): what the message asks for, limited by the model's meta."""
    thinking_on = (features.get("thinking_enabled") is True and features.get("thinking_mode") != "Fast"
                   and (meta is None or bool(meta.get("abilities", {}).get("thinking"))))
    search_on = ((chat_type == "search" or features.get("auto_search") is True)
                 and (meta is None or "search" in meta.get("chat_type", [])))
    return thinking_on, search_on


# ---------------------------------------------------------------- request fields and records


def credentials_of(request: Request) -> tuple[str | None, str | None]:
    """(cookie token, bearer token); the site authenticates on the cookie first."""
    cookie = request.cookies.get("token") or None
    auth = request.headers.get("Authorization", "")
    bearer = (auth[7:].strip() or None) if auth[:7].lower() == "bearer " else None
    return cookie, bearer


def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def profile_record(token: str, claims: dict, email: str) -> dict:
    """The session profile of GET /api/v1/auths/ and of a v1 sign-in."""
    user_id = claims["id"]
    return {"id": user_id, "email": email, "name": email.split("@")[0], "role": "user",
            "profile_image_url": "/static/favicon.png", "token": token, "token_type": "Bearer",
            "expires_at": int(claims["exp"]),
            "permissions": {"workspace": {"models": False, "knowledge": False, "prompts": False,
                                          "tools": False},
                            "chat": {"file_upload": True, "delete": True, "edit": True,
                                     "temporary": True}}}


def settings_record(models: list[dict]) -> dict:
    """GET /api/v2/users/user/settings data: a thinking budget for every thinking model."""
    budgets = {m["id"]: {"thinking_budget": 81920} for m in models
               if m.get("info", {}).get("meta", {}).get("abilities", {}).get("thinking")}
    return {"model_config": budgets, "language": "en-US", "memory": {"enable_memory": False}}


def chat_row(chat: dict) -> dict:
    """One row of GET /api/v2/chats/ from a stored chat."""
    return {"id": chat["id"], "title": chat["title"], "updated_at": chat["updated_at"],
            "created_at": chat["created_at"], "chat_type": chat["chat_type"], "pinned": False,
            "folder_id": None}


def chat_detail_of(chat: dict, messages: list[dict]) -> dict:
    """GET /api/v2/chats/{id} data from a stored chat and a private copy of its messages."""
    current = chat["current_response_id"]
    return {"id": chat["id"], "user_id": chat["owner"], "title": chat["title"],
            "chat_type": chat["chat_type"], "created_at": chat["created_at"],
            "updated_at": chat["updated_at"], "currentId": current, "pinned": False,
            "archived": False, "share_id": None, "folder_id": None,
            "chat": {"id": chat["id"], "title": chat["title"], "models": [chat["model"]],
                     "history": {"messages": {m["id"]: m for m in messages}, "currentId": current},
                     "messages": messages}}


def content_parts_of(turn: TurnRecord, thinking_on: bool, search_on: bool) -> list[dict]:
    """The assistant message's phases as chat history stores them once the turn is done."""
    content_list: list[dict] = []
    if thinking_on and turn.thinking:
        content_list.append({"content": "", "phase": "thinking_summary", "status": "finished",
                             "extra": {"summary_title": {"content": turn.titles},
                                       "summary_thought": {"content": turn.thinking}}})
    if search_on and turn.search_results:
        content_list.append({"content": "", "phase": "web_search", "status": "finished",
                             "extra": {"web_search_info": turn.search_results}})
    content_list.append({"content": turn.answer, "phase": "answer", "status": "finished"})
    return content_list


def history_messages(turn: TurnRecord, parent: Any, message: dict, model_id: str, content_list: list[dict],
                      now: int) -> list[dict]:
    """The user message and the assistant message one turn adds to chat history (§9, §10)."""
    user_msg = {"id": turn.parent_fid, "parentId": parent, "childrenIds": [turn.response_id],
                "role": "user", "content": message.get("content"), "files": message.get("files", []),
                "timestamp": now, "models": [model_id], "chat_type": message.get("chat_type"),
                "feature_config": message.get("feature_config"), "user_action": "chat"}
    bot_msg = {"id": turn.response_id, "parentId": turn.parent_fid, "childrenIds": [],
               "role": "assistant", "content": "", "content_list": content_list, "model": model_id,
               "response_id": turn.response_id, "done": True, "extra": None, "timestamp": now,
               "chat_type": message.get("chat_type")}
    return [user_msg, bot_msg]


# ---------------------------------------------------------------- framing


def sse_frame(payload: Payload, line_ending: str) -> bytes:
    if isinstance(payload, bytes):
        return payload
    data = payload if isinstance(payload, str) else _dumps(payload)
    return f"data: {data}{line_ending}{line_ending}".encode()


def _split_frame(frame: bytes) -> list[bytes]:
    """≥2 pieces: mid-event, between the two line endings, and inside the first multibyte character."""
    cuts = {len(frame) // 2, len(frame) - 1}
    inside = next((i for i, b in enumerate(frame) if 0x80 <= b <= 0xBF), None)
    if inside is not None:
        cuts.add(inside)
    edges = [0] + sorted(c for c in cuts if 0 < c < len(frame)) + [len(frame)]
    return [frame[a:b] for a, b in zip(edges, edges[1:])]


def _is_created(payload: Payload | None) -> bool:
    return isinstance(payload, dict) and "response.created" in payload


class StreamWriter:
    """Turns framed events into HTTP writes: split, coalesced, delayed, with keep-alives."""

    def __init__(self, scenario: _Switches) -> None:
        self.scenario = scenario
        self.pending: list[bytes] = []

    def take(self) -> bytes:
        data, self.pending = b"".join(self.pending), []
        return data

    def drain(self) -> Iterator[bytes]:
        if self.pending:
            yield self.take()

    def gap(self, previous: Payload, release: Any) -> Iterator[bytes]:
        """What happens between two events: the delay (interruptible: ``release.wait``), then a keep-alive comment."""
        sc = self.scenario
        delay = sc.first_token_delay if _is_created(previous) else sc.chunk_delay
        if delay > 0:
            yield from self.drain()
            release.wait(delay)
        if sc.keepalive_comments:
            self.pending.append(f": keep-alive{sc.line_ending}{sc.line_ending}".encode())

    def push(self, payload: Payload) -> Iterator[bytes]:
        self.pending.append(sse_frame(payload, self.scenario.line_ending))
        if self.scenario.coalesce:
            if len(self.pending) >= COALESCE_EVENTS:
                yield self.take()
        elif self.scenario.split_writes and not isinstance(payload, bytes):
            yield from _split_frame(self.take())
        else:
            yield self.take()


def limit_hit(limit: int | None, sent: int) -> bool:
    return limit is not None and sent >= limit


# ---------------------------------------------------------------- fault catalogue

FrameBuilder = Callable[[str, str, str, _Switches], list[Payload]]  # (chat_id, fid, response_id, scenario)
ReplyBuilder = Callable[[_Switches], Response]


def _error_after_content(chat_id: str, fid: str, rid: str, scenario: _Switches) -> list[Payload]:
    turn = TurnRecord(chat_id, fid, rid, "", scenario.answer, [], [], "summary", [], scenario.chunk_chars,
                 scenario.content_mode == "cumulative", True, scenario.usage_input_tokens)
    half = max(1, len(_pieces(turn.answer, turn.chunk_chars)) // 2)  # a few deltas, never the whole answer
    frames: list[Payload] = [created_event(chat_id, fid, rid)]
    frames += list(_answer_events(turn, _Usage(turn.input_tokens), limit=half))
    frames.append({"error": {"code": "internal_error", "details": "Internal error, please try again later."}})
    return frames


def _delta_error(chat_id: str, fid: str, rid: str, scenario: _Switches) -> list[Payload]:
    delta = {"role": "assistant", "content": "", "phase": "answer", "status": "error",
             "extra": {"error": {"code": "internal_error", "details": "Internal error!"}}}
    return [created_event(chat_id, fid, rid), {"choices": [{"delta": delta}], "response_id": rid}]


def _plain(status: int, body: str, content_type: str) -> ReplyBuilder:
    return lambda scenario: _text(body, status, content_type)


def _envelope(code: str, details: str, actual: int | None = None) -> ReplyBuilder:
    return lambda scenario: fail_response(code, details, actual)


def fault_ids(request: Request) -> tuple[str, str, str]:
    """(chat_id, user message fid, new response_id) for in-stream fault frames."""
    body = request.get_json(silent=True)
    messages = body.get("messages") if isinstance(body, dict) else None
    fid = messages[0].get("fid") if isinstance(messages, list) and messages and isinstance(messages[0], dict) else None
    return request.args.get("chat_id") or new_request_id(), str(fid or new_request_id()), new_request_id()


# Faults answered with one ready response.
REPLY_FAULTS: Mapping[str, ReplyBuilder] = MappingProxyType({
    "http_401": lambda s: detail_response(401, "Not authenticated"),
    "http_403": lambda s: detail_response(403, "You do not have permission to access this resource."),
    "http_404": lambda s: detail_response(404, "Not Found"),
    "http_429": lambda s: detail_response(429, "Too Many Requests"),
    "http_500": _plain(500, "Internal Server Error", "text/plain; charset=utf-8"),
    "http_502": _plain(502, "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad "
                            "Gateway</h1></center><hr><center>Tengine</center></body></html>",
                       "text/html"),
    "http_503": _plain(503, "Service Unavailable", "text/plain"),
    "http_504": _plain(504, "<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 "
                            "Gateway Time-out</h1></center><hr><center>Tengine</center></body></html>",
                       "text/html"),
    "bad_request": _envelope("Bad_Request", INTERNAL_DETAILS),
    "rate_limited": lambda s: fail_response("RateLimited", QUOTA_DETAILS, num=s.rate_limit_hours),
    "unauthorized": _envelope("unauthorized", EXPIRED_DETAILS),
    "chat_not_found": _envelope("Not_Found", "CHAT_NOT_FOUND", 404),
    "parallel_limited": _envelope("ParallelLimited", "Too many parallel requests, please try again later."),
    "envelope_top_level": lambda s: json_response({"success": False, "request_id": new_request_id(),
                                           "code": "Bad_Request", "details": INTERNAL_DETAILS}),
    "x5sec": lambda s: json_text_response(x5sec_body(new_request_id())),
    "waf_html": lambda s: _text(_waf_page(new_request_id()), 200, "text/html; charset=utf-8"),
    "waf_html_403": lambda s: _text(_waf_page(new_request_id()), 403, "text/html; charset=utf-8"),
    "gateway_html_405": _plain(405, _GATEWAY_405_PAGE, "text/html"),
    "non_json_200": _plain(200, "upstream error", "application/json"),
})

# Faults answered 200 text/event-stream with these frames, sent like any stream.
STREAM_FAULT_FRAMES: Mapping[str, FrameBuilder] = MappingProxyType({
    "stream_error_string": lambda c, p, r, s: [created_event(c, p, r), {"error": "Internal error!"}],
    "stream_error_code": lambda c, p, r, s: [
        created_event(c, p, r), {"error": {"code": "invalid_input", "details": INVALID_INPUT_DETAILS}}],
    "stream_quota_limit": lambda c, p, r, s: [{"error": {"code": "quota_limit", "detail": QUOTA_DETAILS}}],
    "stream_data_inspection": lambda c, p, r, s: [
        created_event(c, p, r),
        {"error": {"code": "data_inspection_failed", "modality": ["text"], "stage": "input",
                   "details": INSPECTION_DETAILS}, "response_id": r, "response_index": 0}],
    "stream_success_false": lambda c, p, r, s: [
        fail_body("RateLimited", QUOTA_DETAILS, num=s.rate_limit_hours)],
    "stream_delta_error": _delta_error,
    "error_after_content": _error_after_content,
    "empty_stream": lambda c, p, r, s: [],
    "created_only": lambda c, p, r, s: [created_event(c, p, r)],
    "x5sec_in_stream": lambda c, p, r, s: [x5sec_body(r)],
    "waf_in_stream": lambda c, p, r, s: [_waf_page(r).encode()],
})

FAULTS: frozenset[str] = frozenset(REPLY_FAULTS) | frozenset(STREAM_FAULT_FRAMES)
