"""Offline emulator of chat.qwen.ai's private web API, harsh by default.

What this module owns: the wire behaviour of the site as written down in
``shared/qwen-web-protocol.md`` and its captured fixtures — auth (JWT in the
``token`` cookie or a Bearer header, session profile, sign-in), the two model
list endpoints, ``chats/new``, the ``chat/completions`` event stream (thinking
summaries, web search, answer deltas with cumulative usage, no ``[DONE]``),
chat management, the measured request gates, and every failure shape the
site is known to produce (JSON envelopes, in-stream errors, x5sec, WAF pages,
gateway pages, broken and silent streams).

It does not import the proxy: it is the site, not a helper of the client.
All state lives in one :class:`FakeQwen`; :class:`FakeQwenServer` puts it on
a real loopback socket (werkzeug, HTTP/1.1, chunked streams), because
framing faults (split UTF-8, missing terminating chunk) only exist on a wire.

New endpoints (uploads, images, video tasks) go into ``_ROUTES`` plus one
``_h_<name>`` method; new failures go into ``_FAULT_BUILDERS``.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

log = logging.getLogger(__name__)

SITE = "https://chat.qwen.ai"
EXPIRED_DETAILS = "Token has expired, please log in again."
QUOTA_DETAILS = "今日生图额度已用完，登录后可继续生图。"
INVALID_INPUT_DETAILS = "输入或附件无效。请检查后重试。"
INSPECTION_DETAILS = "内容安全警告：输入数据可能包含不适当的内容！"
INTERNAL_DETAILS = "Internal error..."
LINE_ENDINGS = ("\n", "\r\n", "\r")
FAULT_ENDPOINTS = frozenset({"completions", "chats_new", "models", "auths"})
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
CHATS_PER_PAGE = 20
COALESCE_EVENTS = 3

Payload = dict | str | bytes  # dict → data: JSON, str → data: verbatim, bytes → raw write


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


def _decode_jwt(token: str) -> dict | None:
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
        "modality": ["text"]}, None),
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


# ---------------------------------------------------------------- scenario and log


@dataclass
class Scenario:
    """Every switch of the emulator; defaults reproduce the real site at its harshest."""

    answer: str = "Hello from fake Qwen."
    thinking: list[str] = field(default_factory=list)
    thinking_titles: list[str] = field(default_factory=list)
    thinking_style: str = "summary"
    search_results: list[dict] = field(default_factory=list)
    chunk_chars: int = 8
    content_mode: str = "incremental"
    send_done: bool = False
    keepalive_comments: bool = False
    split_writes: bool = True
    coalesce: bool = False
    line_ending: str = "\n"
    first_token_delay: float = 0.0
    chunk_delay: float = 0.0
    fault: str | None = None
    fault_endpoint: str = "completions"
    fault_times: int | None = None
    disconnect_after_events: int | None = None
    stall_after_events: int | None = None
    rate_limit_hours: int = 3
    require_version_header: bool = True
    require_cookie: bool = True
    models: list[dict] | None = None
    models_v2_available: bool = True
    usage_input_tokens: int = 812
    reply: Callable[[str], str] | None = None
    x5sec_body_chars: int | None = 62_000  # measured (§11): a body this long draws x5sec; None = off

    def __post_init__(self) -> None:
        checks = [
            (self.fault is None or self.fault in FAULTS, f"unknown fault {self.fault!r}"),
            (self.fault_endpoint in FAULT_ENDPOINTS, f"unknown fault_endpoint {self.fault_endpoint!r}"),
            (self.thinking_style in ("summary", "think"), f"bad thinking_style {self.thinking_style!r}"),
            (self.content_mode in ("incremental", "cumulative"), f"bad content_mode {self.content_mode!r}"),
            (self.line_ending in LINE_ENDINGS, f"bad line_ending {self.line_ending!r}"),
            (self.chunk_chars >= 1, "chunk_chars must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class HeaderDict(dict):
    """Header map with lower-cased keys, so lookups are case-insensitive."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@dataclass
class RecordedRequest:
    """One request as the site received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: HeaderDict
    cookies: dict[str, str]
    body: bytes
    json: Any

    def as_dict(self) -> dict:
        return {"method": self.method, "path": self.path, "query": self.query,
                "headers": dict(self.headers), "cookies": self.cookies,
                "json": self.json, "body": self.body.decode("utf-8", "replace")}


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: str
    handler: str
    kind: str  # fault_endpoint this route belongs to, or "control"


_ROUTES: tuple[_Route, ...] = (
    _Route("GET", "/api/models", "models_v1", "models"),
    _Route("GET", "/api/v2/models/", "models_v2", "models"),
    _Route("GET", "/api/v1/auths/", "auth_profile", "auths"),
    _Route("GET", "/api/v1/auths", "auth_no_slash", "auths"),
    _Route("POST", "/api/v1/auths/signin", "signin_v1", "auths"),
    _Route("POST", "/api/v2/auths/signin", "signin_v2", "auths"),
    _Route("POST", "/api/v2/chats/new", "chats_new", "chats_new"),
    _Route("POST", "/api/v2/chat/completions", "completions", "completions"),
    _Route("POST", "/api/v2/chat/completions/stop", "stop", "chats"),
    _Route("GET", "/api/v2/chats/", "chat_list", "chats"),
    _Route("DELETE", "/api/v2/chats/", "delete_all", "chats"),
    _Route("GET", "/api/v2/chats/(?P<chat_id>[^/]+)", "chat_detail", "chats"),
    _Route("DELETE", "/api/v2/chats/(?P<chat_id>[^/]+)", "delete_chat", "chats"),
    _Route("GET", "/api/v2/users/user/settings", "settings", "users"),
    _Route("POST", "/__fake__/scenario", "ctl_scenario", "control"),
    _Route("POST", "/__fake__/reset", "ctl_reset", "control"),
    _Route("GET", "/__fake__/requests", "ctl_requests", "control"),
)


# ---------------------------------------------------------------- response helpers


class _Refusal(Exception):
    """Ends request handling early with a ready response."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _AbruptDisconnect(ConnectionAbortedError):
    """Raised inside a stream body: werkzeug drops the socket without the terminating chunk."""


def _dumps(obj: Any) -> str:
    """The site's own serialisation: Python defaults (", " and ": "), raw UTF-8."""
    return json.dumps(obj, ensure_ascii=False)


def _rid() -> str:
    return str(uuid.uuid4())


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_dumps(obj).encode(), status=status, headers=dict(headers or {}),
                    content_type="application/json")


def _ok(data: Any) -> Response:
    return _json({"success": True, "request_id": _rid(), "data": data})


def _fail_body(code: str, details: str, **extra: Any) -> dict:
    return {"success": False, "request_id": _rid(), "data": {"code": code, "details": details, **extra}}


def _fail(code: str, details: str, actual_status: int | None = None, **extra: Any) -> Response:
    """HTTP 200 business error; x-actual-status-code only where it was measured."""
    headers = {"x-actual-status-code": str(actual_status)} if actual_status else None
    return _json(_fail_body(code, details, **extra), headers=headers)


def _detail(status: int, detail: str) -> Response:
    return _json({"detail": detail}, status=status)


def _text(body: str, status: int, content_type: str) -> Response:
    return Response(body.encode(), status=status, content_type=content_type)


def _x5sec_body(seed: str) -> str:
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


def _created(chat_id: str, parent_id: str, response_id: str) -> dict:
    return {"response.created": {"chat_id": chat_id, "parent_id": parent_id,
                                 "response_id": response_id, "response_index": "0"}}


@dataclass
class _Turn:
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


def _delta(turn: _Turn, delta: dict, usage: _Usage | None) -> dict:
    if not turn.with_phase:
        delta = {k: v for k, v in delta.items() if k != "phase"}
    event: dict[str, Any] = {"choices": [{"delta": delta}], "response_id": turn.response_id}
    if usage is not None:
        event["usage"] = usage.snapshot()
        event["timestamp"] = int(time.time())
    return event


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def _summary_events(turn: _Turn, usage: _Usage) -> Iterator[dict]:
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


def _think_events(turn: _Turn, usage: _Usage) -> Iterator[dict]:
    """The older ``think`` phase: reasoning text in delta.content."""
    text = "\n\n".join(turn.thinking)
    sent = ""
    for piece in _pieces(text, turn.chunk_chars):
        sent += piece
        usage.reasoning_chars = len(sent)
        yield _delta(turn, {"role": "assistant", "content": sent if turn.cumulative else piece,
                            "phase": "think", "status": "typing"}, usage)
    yield _delta(turn, {"role": "assistant", "content": "", "phase": "think", "status": "finished"}, None)


def _search_events(turn: _Turn, usage: _Usage) -> Iterator[dict]:
    call = {"name": "web_search", "arguments": _dumps({"query": turn.query[:100]})}
    extra = {"web_search_info": copy.deepcopy(turn.search_results), "display_position": "think"}
    yield _delta(turn, {"role": "assistant", "content": "", "phase": "web_search", "status": "typing",
                        "function_call": call, "extra": extra}, usage)
    yield _delta(turn, {"role": "assistant", "content": "", "phase": "web_search", "status": "finished",
                        "extra": copy.deepcopy(extra)}, usage)


def _answer_events(turn: _Turn, usage: _Usage, limit: int | None = None) -> Iterator[dict]:
    sent = ""
    for piece in _pieces(turn.answer, turn.chunk_chars)[:limit]:
        sent += piece
        usage.answer_chars = len(sent)
        yield _delta(turn, {"role": "assistant", "content": sent if turn.cumulative else piece,
                            "phase": "answer", "status": "typing"}, usage)


def _turn_events(turn: _Turn, thinking_on: bool, search_on: bool) -> Iterator[dict]:
    """The whole normal t2t stream (§6.2), produced lazily."""
    usage = _Usage(turn.input_tokens)
    yield _created(turn.chat_id, turn.parent_fid, turn.response_id)
    if thinking_on and turn.thinking:
        style = _summary_events if turn.thinking_style == "summary" else _think_events
        yield from style(turn, usage)
    if search_on and turn.search_results:
        yield from _search_events(turn, usage)
    yield from _answer_events(turn, usage)
    yield _delta(turn, {"content": "", "role": "assistant", "status": "finished", "phase": "answer"}, None)


def _frame(payload: Payload, line_ending: str) -> bytes:
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


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class _Writer:
    """Turns framed events into HTTP writes: split, coalesced, delayed, with keep-alives."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.pending: list[bytes] = []

    def take(self) -> bytes:
        data, self.pending = b"".join(self.pending), []
        return data

    def drain(self) -> Iterator[bytes]:
        if self.pending:
            yield self.take()

    def gap(self, previous: Payload, release: threading.Event) -> Iterator[bytes]:
        """What happens between two events: the delay (interruptible), then a keep-alive comment."""
        sc = self.scenario
        delay = sc.first_token_delay if _is_created(previous) else sc.chunk_delay
        if delay > 0:
            yield from self.drain()
            release.wait(delay)
        if sc.keepalive_comments:
            self.pending.append(f": keep-alive{sc.line_ending}{sc.line_ending}".encode())

    def push(self, payload: Payload) -> Iterator[bytes]:
        self.pending.append(_frame(payload, self.scenario.line_ending))
        if self.scenario.coalesce:
            if len(self.pending) >= COALESCE_EVENTS:
                yield self.take()
        elif self.scenario.split_writes and not isinstance(payload, bytes):
            yield from _split_frame(self.take())
        else:
            yield self.take()


def _limit_hit(limit: int | None, sent: int) -> bool:
    return limit is not None and sent >= limit


# ---------------------------------------------------------------- the site


class FakeQwen:
    """The emulated site: routes, state, request log and stream bookkeeping."""

    def __init__(self, scenario: Scenario | None = None) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self.scenario = scenario or Scenario()
        self.requests: list[RecordedRequest] = []
        self.chats: dict[str, dict] = {}
        self.invalid_tokens: set[str] = set()
        self.sessions: dict[str, str] = {}
        self.accounts: dict[str, str] = {}
        self.open_streams = 0
        self.stalled_streams = 0
        self._fault_hits = 0
        self._seq = 0
        self._emails: dict[str, str] = {}
        self._stops: set[str] = set()
        self._release = threading.Event()
        self._compiled = [(r, re.compile(r.pattern)) for r in _ROUTES]

    # -- control --------------------------------------------------------

    def configure(self, **fields_: Any) -> None:
        """Replace scenario fields; unknown names raise TypeError, bad values ValueError."""
        with self._lock:
            self.scenario = replace(self.scenario, **fields_)
            if {"fault", "fault_times", "fault_endpoint"} & fields_.keys():
                self._fault_hits = 0

    def reset(self) -> None:
        """Back to a fresh site: default scenario, empty log, chats, credentials and counters."""
        with self._lock:
            self.scenario = Scenario()
            self.requests.clear()
            self.chats.clear()
            self.invalid_tokens.clear()
            self.sessions.clear()
            self.accounts.clear()
            self._emails.clear()
            self._stops.clear()
            self._fault_hits = 0
        self.release_stalls()

    def release_stalls(self) -> None:
        """Wake every stalled stream (they then end) and cut pending delays short."""
        with self._lock:
            self._release.set()
            self._release = threading.Event()

    def close(self) -> None:
        self.release_stalls()

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    def wait_streams_closed(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.open_streams == 0, timeout)

    def wait_stalled(self, timeout: float, count: int = 1) -> bool:
        """Until ``count`` streams sit at their stall point."""
        with self._cond:
            return self._cond.wait_for(lambda: self.stalled_streams >= count, timeout)

    # -- WSGI -----------------------------------------------------------

    def app(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """The WSGI entry point."""
        request = Request(environ)
        response = self._dispatch(request)
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        route, params, path_known = self._match(request.method, request.path)
        if route is None or route.kind != "control":
            self._record(request)
        if route is None:
            return _detail(405, "Method Not Allowed") if path_known else _detail(404, "Not Found")
        scenario = self.scenario
        try:
            fault = self._take_fault(scenario, route.kind)
            if fault is not None:
                log.info("fake qwen: fault %s on %s %s", fault, request.method, request.path)
                return _FAULT_BUILDERS[fault](self, request, scenario)
            return getattr(self, f"_h_{route.handler}")(request, scenario, **params)
        except _Refusal as refusal:
            return refusal.response

    def _match(self, method: str, path: str) -> tuple[_Route | None, dict[str, str], bool]:
        path_known = False
        for route, regex in self._compiled:
            found = regex.fullmatch(path)
            if found:
                path_known = True
                if route.method == method:
                    return route, found.groupdict(), True
        return None, {}, path_known

    def _record(self, request: Request) -> None:
        body = request.get_data(cache=True)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        entry = RecordedRequest(request.method, request.path, dict(request.args.items()),
                                HeaderDict(request.headers.items()), dict(request.cookies.items()),
                                body, parsed)
        with self._lock:
            self.requests.append(entry)

    def _take_fault(self, scenario: Scenario, kind: str) -> str | None:
        if scenario.fault is None or kind != scenario.fault_endpoint:
            return None
        with self._lock:
            if scenario.fault_times is not None and self._fault_hits >= scenario.fault_times:
                return None
            self._fault_hits += 1
        return scenario.fault

    # -- auth -----------------------------------------------------------

    @staticmethod
    def _credentials(request: Request) -> tuple[str | None, str | None]:
        """(cookie token, bearer token); the site authenticates on the cookie first."""
        cookie = request.cookies.get("token") or None
        auth = request.headers.get("Authorization", "")
        bearer = (auth[7:].strip() or None) if auth[:7].lower() == "bearer " else None
        return cookie, bearer

    def _claims(self, token: str) -> dict | None:
        claims = _decode_jwt(token)
        if claims is None or token in self.invalid_tokens or claims["exp"] <= time.time():
            return None
        return claims

    def _user(self, request: Request) -> str:
        """The account id behind the request, or the site's refusal."""
        cookie, bearer = self._credentials(request)
        token = cookie or bearer
        if token is None:
            raise _Refusal(_detail(401, "Not authenticated"))
        claims = self._claims(token)
        if claims is None:
            raise _Refusal(_fail("unauthorized", EXPIRED_DETAILS))
        return claims["id"]

    def _profile(self, token: str, claims: dict) -> dict:
        user_id = claims["id"]
        email = self._emails.get(user_id, f"{user_id}@example.com")
        return {"id": user_id, "email": email, "name": email.split("@")[0], "role": "user",
                "profile_image_url": "/static/favicon.png", "token": token, "token_type": "Bearer",
                "expires_at": int(claims["exp"]),
                "permissions": {"workspace": {"models": False, "knowledge": False, "prompts": False,
                                              "tools": False},
                                "chat": {"file_upload": True, "delete": True, "edit": True,
                                         "temporary": True}}}

    def _h_auth_profile(self, request: Request, scenario: Scenario) -> Response:
        cookie, bearer = self._credentials(request)
        token = cookie or bearer or self.sessions.get(request.cookies.get("qwen_session", ""))
        claims = self._claims(token) if token else None
        if token is None or claims is None:
            return _detail(401, "Your session has expired or the token is invalid. Please sign in again.")
        return _json(self._profile(token, claims))

    def _h_auth_no_slash(self, request: Request, scenario: Scenario) -> Response:
        return _detail(401, "Not authenticated")

    def _signin(self, request: Request) -> tuple[str, dict] | None:
        """Checks {email, sha256-hex password}; returns (token, profile) on success."""
        body = request.get_json(silent=True) or {}
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or self.accounts.get(email) != password:
            return None
        user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"qwen:{email}"))
        with self._lock:
            self._emails[user_id] = email
        token = make_jwt(user_id)
        return token, self._profile(token, _decode_jwt(token) or {})

    def _h_signin_v1(self, request: Request, scenario: Scenario) -> Response:
        result = self._signin(request)
        if result is None:
            return _detail(401, "The email or password provided is incorrect. "
                                "Please check for typos and try logging in again.")
        return _json(result[1])

    def _h_signin_v2(self, request: Request, scenario: Scenario) -> Response:
        result = self._signin(request)
        if result is None:
            return _json(_fail_body("Unauthorized", "The email or password provided is incorrect."),
                         status=401)
        token, profile = result
        record = {k: v for k, v in profile.items() if k not in ("token", "token_type", "expires_at")}
        response = _ok(record)
        response.headers.add("Set-Cookie", f"token={token}; Path=/; Max-Age={30 * 86400}; "
                                           "HttpOnly; SameSite=Lax")
        return response

    # -- models ---------------------------------------------------------

    @staticmethod
    def _models(scenario: Scenario) -> list[dict]:
        return copy.deepcopy(scenario.models if scenario.models is not None else DEFAULT_MODELS)

    def _h_models_v1(self, request: Request, scenario: Scenario) -> Response:
        return _json({"data": self._models(scenario)})

    def _h_models_v2(self, request: Request, scenario: Scenario) -> Response:
        if not scenario.models_v2_available:
            return _detail(404, "Not Found")
        return _ok({"data": self._models(scenario)})

    def _model_meta(self, scenario: Scenario, model_id: str) -> dict | None:
        for model in self._models(scenario):
            if model.get("id") == model_id:
                return model.get("info", {}).get("meta", {})
        return None

    # -- chats ----------------------------------------------------------

    def _h_chats_new(self, request: Request, scenario: Scenario) -> Response:
        user = self._user(request)
        body = request.get_json(silent=True)
        models = body.get("models") if isinstance(body, dict) else None
        if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
            return _fail("Bad_Request", "RequestValidationError: Field 'models': Field required", 400)
        chat_id, now = _rid(), int(time.time())
        with self._lock:
            self._seq += 1
            self.chats[chat_id] = {
                "id": chat_id, "owner": user, "chat_type": body.get("chat_type") or "t2t",
                "model": models[0], "title": body.get("title") or "New Chat",
                "chat_mode": body.get("chat_mode", "normal"), "messages": [],
                "current_response_id": None, "turns": [], "created_at": now, "updated_at": now,
                "seq": self._seq}
        return _ok({"id": chat_id})

    def _owned_chat(self, user: str, chat_id: str | None) -> dict:
        chat = self.chats.get(chat_id or "")
        if chat is None or chat["owner"] != user:
            raise _Refusal(_fail("Not_Found", "CHAT_NOT_FOUND", 404))
        return chat

    def _h_chat_list(self, request: Request, scenario: Scenario) -> Response:
        user = self._user(request)
        try:
            page = max(1, int(request.args.get("page", "1")))
        except ValueError:
            return _fail("Bad_Request", "RequestValidationError: Field 'page': Input should be a valid integer")
        with self._lock:
            mine = sorted((c for c in self.chats.values() if c["owner"] == user),
                          key=lambda c: (c["updated_at"], c["seq"]), reverse=True)
        rows = mine[(page - 1) * CHATS_PER_PAGE: page * CHATS_PER_PAGE]
        return _ok([{"id": c["id"], "title": c["title"], "updated_at": c["updated_at"],
                     "created_at": c["created_at"], "chat_type": c["chat_type"], "pinned": False,
                     "folder_id": None} for c in rows])

    def _h_chat_detail(self, request: Request, scenario: Scenario, chat_id: str) -> Response:
        chat = self._owned_chat(self._user(request), chat_id)
        with self._lock:
            messages = copy.deepcopy(chat["messages"])
        current = chat["current_response_id"]
        return _ok({"id": chat["id"], "user_id": chat["owner"], "title": chat["title"],
                    "chat_type": chat["chat_type"], "created_at": chat["created_at"],
                    "updated_at": chat["updated_at"], "currentId": current, "pinned": False,
                    "archived": False, "share_id": None, "folder_id": None,
                    "chat": {"id": chat["id"], "title": chat["title"], "models": [chat["model"]],
                             "history": {"messages": {m["id"]: m for m in messages}, "currentId": current},
                             "messages": messages}})

    def _h_delete_chat(self, request: Request, scenario: Scenario, chat_id: str) -> Response:
        chat = self._owned_chat(self._user(request), chat_id)
        with self._lock:
            self.chats.pop(chat["id"], None)
        return _ok({"status": True})

    def _h_delete_all(self, request: Request, scenario: Scenario) -> Response:
        user = self._user(request)
        with self._lock:
            for chat_id in [k for k, c in self.chats.items() if c["owner"] == user]:
                del self.chats[chat_id]
        return _ok({"status": True})

    def _h_stop(self, request: Request, scenario: Scenario) -> Response:
        self._user(request)
        body = request.get_json(silent=True) or {}
        keys = {request.args.get("chat_id"), body.get("chat_id"), body.get("response_id")}
        with self._lock:
            self._stops.update(k for k in keys if isinstance(k, str) and k)
        return _ok({"status": True})

    def _h_settings(self, request: Request, scenario: Scenario) -> Response:
        self._user(request)
        budgets = {m["id"]: {"thinking_budget": 81920} for m in self._models(scenario)
                   if m.get("info", {}).get("meta", {}).get("abilities", {}).get("thinking")}
        return _ok({"model_config": budgets, "language": "en-US", "memory": {"enable_memory": False}})

    # -- completions ----------------------------------------------------

    def _h_completions(self, request: Request, scenario: Scenario) -> Response:
        cookie, bearer = self._credentials(request)
        if scenario.require_cookie and bearer and not cookie:
            return _json_text(_x5sec_body(bearer))
        limit = scenario.x5sec_body_chars
        if limit is not None and len(request.get_data(cache=True).decode("utf-8", "replace")) >= limit:
            return _json_text(_x5sec_body(_rid()))
        user = self._user(request)
        if scenario.require_version_header and not request.headers.get("version", "").strip():
            return _fail("Bad_Request", "RequestValidationError: Header 'version': Field required")
        chat_id = request.args.get("chat_id")
        if not chat_id:
            return _fail("Bad_Request", "RequestValidationError: Field 'chat_id': Field required", 400)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _fail("Bad_Request", "RequestValidationError: JSON decode error", 400)
        chat = self._owned_chat(user, chat_id)
        messages = body.get("messages")
        if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
            return _fail("Bad_Request", "Invalid input too many messages")
        if body.get("stream") is not True:
            return _fail("Bad_Request", INTERNAL_DETAILS)
        return self._start_turn(scenario, chat, body, messages[0])

    def _start_turn(self, scenario: Scenario, chat: dict, body: dict, message: dict) -> Response:
        """Accepts the turn: records it in the chat, then streams it."""
        features = message.get("feature_config") if isinstance(message.get("feature_config"), dict) else {}
        model_id = body.get("model") or chat["model"]
        meta = self._model_meta(scenario, model_id)
        query = _message_text(message.get("content"))
        turn = _Turn(chat_id=chat["id"], parent_fid=str(message.get("fid") or _rid()), response_id=_rid(),
                     query=query, answer=scenario.reply(query) if scenario.reply else scenario.answer,
                     thinking=list(scenario.thinking), titles=list(scenario.thinking_titles),
                     thinking_style=scenario.thinking_style, search_results=list(scenario.search_results),
                     chunk_chars=scenario.chunk_chars, cumulative=scenario.content_mode == "cumulative",
                     with_phase=features.get("output_schema") == "phase",
                     input_tokens=scenario.usage_input_tokens)
        chat_type = message.get("chat_type") or chat["chat_type"]
        thinking_on = (features.get("thinking_enabled") is True and features.get("thinking_mode") != "Fast"
                       and (meta is None or bool(meta.get("abilities", {}).get("thinking"))))
        search_on = ((chat_type == "search" or features.get("auto_search") is True)
                     and (meta is None or "search" in meta.get("chat_type", [])))
        self._record_turn(chat, body, message, turn, model_id, thinking_on, search_on)
        events = _turn_events(turn, thinking_on, search_on)
        return self._sse(scenario, events, stop_keys=(chat["id"], turn.response_id))

    def _record_turn(self, chat: dict, body: dict, message: dict, turn: _Turn, model_id: str,
                     thinking_on: bool, search_on: bool) -> None:
        """Server-side history (§9, §10): user message, assistant message, current response id."""
        now = int(time.time())
        parent = body.get("parent_id")
        content_list: list[dict] = []
        if thinking_on and turn.thinking:
            content_list.append({"content": "", "phase": "thinking_summary", "status": "finished",
                                 "extra": {"summary_title": {"content": turn.titles},
                                           "summary_thought": {"content": turn.thinking}}})
        if search_on and turn.search_results:
            content_list.append({"content": "", "phase": "web_search", "status": "finished",
                                 "extra": {"web_search_info": turn.search_results}})
        content_list.append({"content": turn.answer, "phase": "answer", "status": "finished"})
        user_msg = {"id": turn.parent_fid, "parentId": parent, "childrenIds": [turn.response_id],
                    "role": "user", "content": message.get("content"), "files": message.get("files", []),
                    "timestamp": now, "models": [model_id], "chat_type": message.get("chat_type"),
                    "feature_config": message.get("feature_config"), "user_action": "chat"}
        bot_msg = {"id": turn.response_id, "parentId": turn.parent_fid, "childrenIds": [],
                   "role": "assistant", "content": "", "content_list": content_list, "model": model_id,
                   "response_id": turn.response_id, "done": True, "extra": None, "timestamp": now,
                   "chat_type": message.get("chat_type")}
        with self._lock:
            for old in chat["messages"]:
                if old["id"] == parent:
                    old["childrenIds"].append(turn.parent_fid)
            chat["messages"] += [user_msg, bot_msg]
            chat["turns"].append({"parent_id": parent, "fid": turn.parent_fid,
                                  "response_id": turn.response_id})
            chat["current_response_id"] = turn.response_id
            chat["updated_at"] = now
            self._seq += 1
            chat["seq"] = self._seq

    # -- streaming ------------------------------------------------------

    def _sse(self, scenario: Scenario, events: Iterable[Payload], stop_keys: tuple[str, ...] = ()) -> Response:
        """A 200 event-stream whose body honours every framing and timing switch of the scenario."""
        body = self._stream_body(scenario, events, self._release, stop_keys)
        return Response(body, status=200, content_type=SSE_CONTENT_TYPE, direct_passthrough=True,
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _stream_body(self, scenario: Scenario, events: Iterable[Payload], release: threading.Event,
                     stop_keys: tuple[str, ...]) -> Iterator[bytes]:
        with self._cond:
            self.open_streams += 1
        try:
            yield from self._pump(scenario, events, release, stop_keys)
        finally:
            with self._cond:
                self.open_streams -= 1
                self._cond.notify_all()

    def _pump(self, scenario: Scenario, events: Iterable[Payload], release: threading.Event,
              stop_keys: tuple[str, ...]) -> Iterator[bytes]:
        """Writes the events; disconnect/stall limits count data events (created included)."""
        out = _Writer(scenario)
        previous: Payload | None = None
        for sent, payload in enumerate(self._with_done(scenario, events)):
            if _limit_hit(scenario.disconnect_after_events, sent):
                frame = _frame(payload, scenario.line_ending)
                yield out.take() + frame[: max(1, len(frame) // 2)]
                raise _AbruptDisconnect("fake qwen: abrupt disconnect")
            if _limit_hit(scenario.stall_after_events, sent):
                yield from out.drain()
                self._stall(release)
                return
            if self._stopped(stop_keys):
                break
            if previous is not None:
                yield from out.gap(previous, release)
            yield from out.push(payload)
            previous = payload
        yield from out.drain()

    @staticmethod
    def _with_done(scenario: Scenario, events: Iterable[Payload]) -> Iterator[Payload]:
        yield from events
        if scenario.send_done:
            yield "[DONE]"

    def _stall(self, release: threading.Event) -> None:
        """Holds the connection open, interruptibly, until reset()/close()/release_stalls()."""
        with self._cond:
            self.stalled_streams += 1
            self._cond.notify_all()
        try:
            release.wait()
        finally:
            with self._cond:
                self.stalled_streams -= 1
                self._cond.notify_all()

    def _stopped(self, keys: tuple[str, ...]) -> bool:
        with self._lock:
            return any(k in self._stops for k in keys)

    # -- control API (standalone use) ------------------------------------

    def _h_ctl_scenario(self, request: Request, scenario: Scenario) -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or "reply" in body:
            return _detail(400, "a JSON object of Scenario fields (not 'reply') is required")
        try:
            self.configure(**body)
        except (TypeError, ValueError) as exc:
            return _detail(400, str(exc))
        return _json(_scenario_json(self.scenario))

    def _h_ctl_reset(self, request: Request, scenario: Scenario) -> Response:
        self.reset()
        return _json({"status": True})

    def _h_ctl_requests(self, request: Request, scenario: Scenario) -> Response:
        with self._lock:
            return _json([r.as_dict() for r in self.requests])


def _is_created(payload: Payload | None) -> bool:
    return isinstance(payload, dict) and "response.created" in payload


def _json_text(text: str, status: int = 200) -> Response:
    return Response(text.encode(), status=status, content_type="application/json")


def _scenario_json(scenario: Scenario) -> dict:
    return {f.name: getattr(scenario, f.name) for f in fields(scenario) if f.name != "reply"}


# ---------------------------------------------------------------- faults


def _fault_ids(request: Request) -> tuple[str, str, str]:
    """(chat_id, user message fid, new response_id) for in-stream fault frames."""
    body = request.get_json(silent=True)
    messages = body.get("messages") if isinstance(body, dict) else None
    fid = messages[0].get("fid") if isinstance(messages, list) and messages and isinstance(messages[0], dict) else None
    return request.args.get("chat_id") or _rid(), str(fid or _rid()), _rid()


def _stream_fault(frames: Callable[[str, str, str, Scenario], list[Payload]]) -> Callable:
    """Wraps a frame list builder into a fault that answers 200 text/event-stream."""
    def build(fake: FakeQwen, request: Request, scenario: Scenario) -> Response:
        chat_id, fid, response_id = _fault_ids(request)
        return fake._sse(scenario, frames(chat_id, fid, response_id, scenario))
    return build


def _plain(status: int, body: str, content_type: str) -> Callable:
    return lambda fake, request, scenario: _text(body, status, content_type)


def _envelope(code: str, details: str, actual: int | None = None) -> Callable:
    return lambda fake, request, scenario: _fail(code, details, actual)


def _error_after_content(chat_id: str, fid: str, rid: str, scenario: Scenario) -> list[Payload]:
    turn = _Turn(chat_id, fid, rid, "", scenario.answer, [], [], "summary", [], scenario.chunk_chars,
                 scenario.content_mode == "cumulative", True, scenario.usage_input_tokens)
    half = max(1, len(_pieces(turn.answer, turn.chunk_chars)) // 2)  # a few deltas, never the whole answer
    frames: list[Payload] = [_created(chat_id, fid, rid)]
    frames += list(_answer_events(turn, _Usage(turn.input_tokens), limit=half))
    frames.append({"error": {"code": "internal_error", "details": "Internal error, please try again later."}})
    return frames


def _delta_error(chat_id: str, fid: str, rid: str, scenario: Scenario) -> list[Payload]:
    delta = {"role": "assistant", "content": "", "phase": "answer", "status": "error",
             "extra": {"error": {"code": "internal_error", "details": "Internal error!"}}}
    return [_created(chat_id, fid, rid), {"choices": [{"delta": delta}], "response_id": rid}]


_FAULT_BUILDERS: Mapping[str, Callable[[FakeQwen, Request, Scenario], Response]] = MappingProxyType({
    "http_401": lambda f, r, s: _detail(401, "Not authenticated"),
    "http_403": lambda f, r, s: _detail(403, "You do not have permission to access this resource."),
    "http_404": lambda f, r, s: _detail(404, "Not Found"),
    "http_429": lambda f, r, s: _detail(429, "Too Many Requests"),
    "http_500": _plain(500, "Internal Server Error", "text/plain; charset=utf-8"),
    "http_502": _plain(502, "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad "
                            "Gateway</h1></center><hr><center>Tengine</center></body></html>",
                       "text/html"),
    "http_503": _plain(503, "Service Unavailable", "text/plain"),
    "http_504": _plain(504, "<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 "
                            "Gateway Time-out</h1></center><hr><center>Tengine</center></body></html>",
                       "text/html"),
    "bad_request": _envelope("Bad_Request", INTERNAL_DETAILS),
    "rate_limited": lambda f, r, s: _fail("RateLimited", QUOTA_DETAILS, num=s.rate_limit_hours),
    "unauthorized": _envelope("unauthorized", EXPIRED_DETAILS),
    "chat_not_found": _envelope("Not_Found", "CHAT_NOT_FOUND", 404),
    "parallel_limited": _envelope("ParallelLimited", "Too many parallel requests, please try again later."),
    "envelope_top_level": lambda f, r, s: _json({"success": False, "request_id": _rid(),
                                                 "code": "Bad_Request", "details": INTERNAL_DETAILS}),
    "stream_error_string": _stream_fault(lambda c, p, r, s: [_created(c, p, r), {"error": "Internal error!"}]),
    "stream_error_code": _stream_fault(lambda c, p, r, s: [
        _created(c, p, r), {"error": {"code": "invalid_input", "details": INVALID_INPUT_DETAILS}}]),
    "stream_quota_limit": _stream_fault(lambda c, p, r, s: [
        {"error": {"code": "quota_limit", "detail": QUOTA_DETAILS}}]),
    "stream_data_inspection": _stream_fault(lambda c, p, r, s: [
        _created(c, p, r),
        {"error": {"code": "data_inspection_failed", "modality": ["text"], "stage": "input",
                   "details": INSPECTION_DETAILS}, "response_id": r, "response_index": 0}]),
    "stream_success_false": _stream_fault(lambda c, p, r, s: [
        _fail_body("RateLimited", QUOTA_DETAILS, num=s.rate_limit_hours)]),
    "stream_delta_error": _stream_fault(_delta_error),
    "error_after_content": _stream_fault(_error_after_content),
    "empty_stream": _stream_fault(lambda c, p, r, s: []),
    "created_only": _stream_fault(lambda c, p, r, s: [_created(c, p, r)]),
    "x5sec": lambda f, r, s: _json_text(_x5sec_body(_rid())),
    "x5sec_in_stream": _stream_fault(lambda c, p, r, s: [_x5sec_body(r)]),
    "waf_html": lambda f, r, s: _text(_waf_page(_rid()), 200, "text/html; charset=utf-8"),
    "waf_html_403": lambda f, r, s: _text(_waf_page(_rid()), 403, "text/html; charset=utf-8"),
    "waf_in_stream": _stream_fault(lambda c, p, r, s: [_waf_page(r).encode()]),
    "gateway_html_405": _plain(405, _GATEWAY_405_PAGE, "text/html"),
    "non_json_200": _plain(200, "upstream error", "application/json"),
})

FAULTS: frozenset[str] = frozenset(_FAULT_BUILDERS)


# ---------------------------------------------------------------- server


class FakeQwenServer:
    """A FakeQwen on a real loopback socket (threaded werkzeug ⇒ HTTP/1.1, chunked streams)."""

    def __init__(self, fake: FakeQwen | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fake = fake or FakeQwen()
        self.host = host
        self.port = port
        self.base_url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeQwenServer:
        # make_server binds and listens before returning, so clients may connect at once.
        self._server = make_server(self.host, self.port, self.fake.app, threaded=True)
        self.port = self._server.server_port
        self.base_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-qwen", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.fake.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def main(argv: list[str] | None = None) -> None:
    """Standalone: serve until Ctrl-C (control API under /__fake__/)."""
    parser = argparse.ArgumentParser(description="Fake chat.qwen.ai web API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--fault", choices=sorted(FAULTS))
    parser.add_argument("--answer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fake = FakeQwen()
    settings: dict[str, Any] = {"fault": args.fault}
    if args.answer is not None:
        settings["answer"] = args.answer
    fake.configure(**settings)
    with FakeQwenServer(fake, args.host, args.port) as server:
        log.info("fake qwen serving at %s (Ctrl-C to stop)", server.base_url)
        stop = threading.Event()
        try:
            while not stop.wait(3600):
                pass
        except KeyboardInterrupt:
            log.info("fake qwen stopping")


if __name__ == "__main__":
    main()
