"""Offline emulator of chat.qwen.ai's private web API, harsh by default: the site's server side.

What this module owns: the behaviour of the site as written down in the
protocol reference (``qwen-web-protocol.md``) and its captures (the ones the
tests read are copied in ``tests/fixtures/``) — who may call what
(JWT in the ``token`` cookie or a Bearer header, session profile, sign-in), the
routes and their handlers (models, ``chats/new``, ``chat/completions``, chat
management), the measured request gates, the chat state, the request log, the
switches (:class:`Scenario`) including when each known failure fires, and the
streaming pump with its delays, disconnect and stall points (a client that hangs up during a delay or
stall ends the stream, as the site notices it). What the bytes look
like (tokens, model objects, envelopes, records, fault bodies, events, SSE
framing) lives in :mod:`tests.fake_qwen.wire`; its public names (``make_jwt``,
``DEFAULT_MODELS``, ``FAULTS``, the constants) are re-exported here.

It does not import the proxy: it is the site, not a helper of the client.
All state lives in one :class:`FakeQwen`; :class:`FakeQwenServer` puts it on
a real loopback socket (werkzeug, HTTP/1.1, chunked streams), because
framing faults (split UTF-8, missing terminating chunk) only exist on a wire.

New endpoints (uploads, images, video tasks) go into ``_ROUTES`` plus one
``_h_<name>`` method; new failures go into ``REPLY_FAULTS`` or
``STREAM_FAULT_FRAMES`` in the wire module.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Iterator

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.fake_qwen.agents import SCRIPT_ROUTES, ScriptedReplies
from tests.fake_qwen.auth import AUTH_ROUTES, AuthMixin
from tests.fake_qwen.drift import (
    WAF_COOKIE, answer_events, drift_checks, issue_waf_cookie, missing_browser_headers, think_skip_frames,
    thinking_off_refused,
)
from tests.fake_qwen.wire import (  # public names re-exported: tests import them from here
    COALESCE_EVENTS, DEFAULT_MODELS, EXPIRED_DETAILS, FAULTS, INSPECTION_DETAILS, INTERNAL_DETAILS,
    INVALID_INPUT_DETAILS, LINE_ENDINGS, QUOTA_DETAILS, SITE, Payload, make_jwt,
)
from tests.fake_qwen.wire import (
    REPLY_FAULTS, STREAM_FAULT_FRAMES, chat_detail_of, chat_row, content_parts_of, credentials_of, decode_jwt,
    detail_response, fail_response, fail_body, fault_ids, sse_frame, history_messages, json_response, json_text_response, limit_hit,
    model_meta, model_records, new_turn, ok_response, profile_record, new_request_id, settings_record, TurnRecord,
    turn_switches, StreamWriter, x5sec_body,
)
from tests.fake_qwen.media_out import (
    MEDIA_CHAT_TYPES, MEDIA_OUT_FAULT_ENDPOINTS, MEDIA_OUT_ROUTES, MediaOutSite, MediaOutSwitches, media_out_checks,
)
from tests.fake_qwen.uploads import UPLOAD_FAULT_ENDPOINTS, UPLOAD_ROUTES, UploadScenario, UploadsMixin

log = logging.getLogger(__name__)

FAULT_ENDPOINTS = (frozenset({"completions", "chats_new", "models", "auths", "signin"}) | UPLOAD_FAULT_ENDPOINTS
                   | MEDIA_OUT_FAULT_ENDPOINTS)
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
CHATS_PER_PAGE = 20


# ---------------------------------------------------------------- scenario and log


@dataclass
class Scenario(UploadScenario, MediaOutSwitches):
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
    #: The size captcha (§11, §14): a completion body of this many bytes of UTF-8 or more draws x5sec at
    #: once. The site counts bytes (44,000 CJK characters ≈ 129 KB were refused, R1#147); "about 128 KB"
    #: is read at its harsher, decimal end. None = off.
    x5sec_body_bytes: int | None = 128_000
    token_ttl: int = 30 * 86400  # life of tokens the site issues (sign-in, session renewal)
    access_token_ttl: int = 900  # the auth host's access tokens live 15 minutes (§2.4)
    session_renewal: bool = False  # /api/v1/auths/ renews a session's ageing token; off = same token
    account_faults: dict[str, str] | None = None  # account id -> fault on its chats/new and completions
    require_browser_headers: bool = True  # a completion without Sec-Fetch-*, timezone, ... draws RGV587 (§1.2)
    candidates: int = 1  # 2: two candidate answers, interleaved (§14; tests.fake_qwen.drift)
    candidate_order: str = "followed_first"  # whose deltas come first after both created events
    candidate_untagged: bool = False  # some deltas of candidate 0 carry no response_id
    rival_answer: str = ""  # what candidate 1 says (empty: drift.RIVAL_ANSWER twice)
    candidate_rival_fails: bool = False  # candidate 1 ends in a moderation error tagged with its response_id
    require_waf_cookie: bool = False  # a completion must carry an acw_tc cookie the site set (R1#132)
    #: Sign-in generations that answer (§2.4): the auth host, v2 and v1; a retired one answers as it did.
    signin_generations: tuple[str, ...] = ("auth_host", "v2")
    signin_limit: int | None = 12  # sign-in attempts per IP per window before the WAF page (§2.4); None = off
    signin_window: float = 360.0
    signin_faults: dict[str, str] | None = None  # email -> fault its sign-ins meet (one account's WAF page)

    def __post_init__(self) -> None:
        checks = [
            (self.fault is None or self.fault in FAULTS, f"unknown fault {self.fault!r}"),
            (self.fault_endpoint in FAULT_ENDPOINTS, f"unknown fault_endpoint {self.fault_endpoint!r}"),
            (self.thinking_style in ("summary", "think"), f"bad thinking_style {self.thinking_style!r}"),
            (self.content_mode in ("incremental", "cumulative"), f"bad content_mode {self.content_mode!r}"),
            (self.line_ending in LINE_ENDINGS, f"bad line_ending {self.line_ending!r}"),
            (self.chunk_chars >= 1, "chunk_chars must be >= 1"),
            (all(f in FAULTS for f in (self.account_faults or {}).values()), "unknown fault in account_faults"),
        ] + self._check_uploads() + media_out_checks(self) + drift_checks(self)
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
    _Route("POST", "/api/v1/auths/signin", "signin_v1", "signin"),
    _Route("POST", "/api/v2/auths/signin", "signin_v2", "signin"),
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
    *(_Route(*route) for route in AUTH_ROUTES),
    *(_Route(*row) for row in SCRIPT_ROUTES),
) + tuple(_Route(*route) for route in UPLOAD_ROUTES) + tuple(_Route(*route) for route in MEDIA_OUT_ROUTES)


# ---------------------------------------------------------------- control flow


class _Refusal(Exception):
    """Ends request handling early with a ready response."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _AbruptDisconnect(ConnectionAbortedError):
    """Raised inside a stream body: werkzeug drops the socket without the terminating chunk."""


class _PeerGone(ConnectionAbortedError):
    """Raised inside a stream body when the client hung up while the site was silent."""


#: How often a silent stream looks at its client's socket: the site notices a hang-up while thinking.
PEER_CHECK_SECONDS = 0.05


def _peer_closed(peer: socket.socket | None) -> bool:
    """The client closed its side: its socket reads as EOF (or fails). Data waiting means it is still there."""
    if peer is None:
        return False
    try:
        readable, _, _ = select.select([peer], [], [], 0)
        return bool(readable) and not peer.recv(1, socket.MSG_PEEK)
    except (OSError, ValueError):
        return True


class _SilentWait:
    """``release.wait`` for a stream's delays and stalls that also ends the stream when the client hangs up."""

    def __init__(self, release: threading.Event, peer: socket.socket | None) -> None:
        self.release, self.peer = release, peer

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = PEER_CHECK_SECONDS if deadline is None else min(PEER_CHECK_SECONDS, deadline - time.monotonic())
            if step <= 0:
                return False
            if self.release.wait(step):
                return True
            if _peer_closed(self.peer):
                raise _PeerGone("fake qwen: the client hung up during a silence")



# ---------------------------------------------------------------- the site


class FakeQwen(AuthMixin, UploadsMixin, ScriptedReplies, MediaOutSite):
    """The emulated site: routes, state, request log and stream bookkeeping."""

    def __init__(self, scenario: Scenario | None = None) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self.scenario = scenario or Scenario()
        self.requests: list[RecordedRequest] = []
        self.chats: dict[str, dict] = {}
        self.invalid_tokens: set[str] = set()
        self.waf_cookies: set[str] = set()
        self.sessions: dict[str, str] = {}
        self.refresh_tokens: dict[str, str] = {}
        self.accounts: dict[str, str] = {}
        self.open_streams = 0
        self.stalled_streams = 0
        self._fault_hits = 0
        self._seq = 0
        self._emails: dict[str, str] = {}
        self._stops: set[str] = set()
        self._release = threading.Event()
        self._local = threading.local()
        self._compiled = [(r, re.compile(r.pattern)) for r in _ROUTES]
        self._reset_uploads()
        self._reset_signins()
        self._init_script()
        self._init_media_out()

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
            self.waf_cookies.clear()
            self.sessions.clear()
            self.refresh_tokens.clear()
            self.accounts.clear()
            self._emails.clear()
            self._stops.clear()
            self._fault_hits = 0
            self._reset_uploads()
            self._reset_signins()
            self._init_media_out()
        self._clear_script()
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

    def wait_request(self, path: str, method: str | None = None, timeout: float = 5.0) -> RecordedRequest | None:
        """The first request to ``path`` (with ``method``), waited for up to ``timeout`` seconds."""
        with self._cond:
            if self._cond.wait_for(lambda: self.requests_to(path, method), timeout):
                return self.requests_to(path, method)[0]
        return None

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
        self._local.peer = environ.get("werkzeug.socket")  # streams of this request watch it while silent
        request = Request(environ)
        response = self._dispatch(request)
        issue_waf_cookie(request, response, self.waf_cookies)
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        route, params, path_known = self._match(request.method, request.path)
        if route is None or route.kind != "control":
            self._record(request)
        if route is None:
            return detail_response(405, "Method Not Allowed") if path_known else detail_response(404, "Not Found")
        scenario = self.scenario
        try:
            fault = self._account_fault(request, route.kind) or self._take_fault(scenario, route.kind)
            if fault is not None:
                log.info("fake qwen: fault %s on %s %s", fault, request.method, request.path)
                return self._fault(fault, request, scenario)
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
        with self._cond:
            self.requests.append(entry)
            self._cond.notify_all()

    def _take_fault(self, scenario: Scenario, kind: str) -> str | None:
        if scenario.fault is None or kind != scenario.fault_endpoint:
            return None
        with self._lock:
            if scenario.fault_times is not None and self._fault_hits >= scenario.fault_times:
                return None
            self._fault_hits += 1
        return scenario.fault

    def _fault(self, fault: str, request: Request, scenario: Scenario) -> Response:
        """The fault's ready reply, or its frames streamed like any completion."""
        frames = STREAM_FAULT_FRAMES.get(fault)
        if frames is None:
            return REPLY_FAULTS[fault](scenario)
        chat_id, fid, response_id = fault_ids(request)
        return self._sse(scenario, frames(chat_id, fid, response_id, scenario))

    # -- auth -----------------------------------------------------------

    def _claims(self, token: str) -> dict | None:
        claims = decode_jwt(token)
        if claims is None or token in self.invalid_tokens or claims["exp"] <= time.time():
            return None
        return claims

    def _user(self, request: Request) -> str:
        """The account id behind the request, or the site's refusal."""
        cookie, bearer = credentials_of(request)
        token = cookie or bearer
        if token is None:
            raise _Refusal(detail_response(401, "Not authenticated"))
        claims = self._claims(token)
        if claims is None:
            raise _Refusal(fail_response("unauthorized", EXPIRED_DETAILS))
        return claims["id"]

    def _profile(self, token: str, claims: dict) -> dict:
        user_id = claims["id"]
        return profile_record(token, claims, self._emails.get(user_id, f"{user_id}@example.com"))

    def _h_auth_profile(self, request: Request, scenario: Scenario) -> Response:
        found = self._profile_token(request)
        if found is None:
            return detail_response(401, "Your session has expired or the token is invalid. Please sign in again.")
        return json_response(self._profile(*found))

    def _h_auth_no_slash(self, request: Request, scenario: Scenario) -> Response:
        return detail_response(401, "Not authenticated")

    # -- models ---------------------------------------------------------

    def _h_models_v1(self, request: Request, scenario: Scenario) -> Response:
        return json_response({"data": model_records(scenario.models)})

    def _h_models_v2(self, request: Request, scenario: Scenario) -> Response:
        if not scenario.models_v2_available:
            return detail_response(404, "Not Found")
        return ok_response({"data": model_records(scenario.models)})

    # -- chats ----------------------------------------------------------

    def _h_chats_new(self, request: Request, scenario: Scenario) -> Response:
        user = self._user(request)
        body = request.get_json(silent=True)
        models = body.get("models") if isinstance(body, dict) else None
        if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
            return fail_response("Bad_Request", "RequestValidationError: Field 'models': Field required", 400)
        chat_id, now = new_request_id(), int(time.time())
        with self._lock:
            self._seq += 1
            self.chats[chat_id] = {
                "id": chat_id, "owner": user, "chat_type": body.get("chat_type") or "t2t",
                "model": models[0], "title": body.get("title") or "New Chat",
                "chat_mode": body.get("chat_mode", "normal"), "messages": [],
                "current_response_id": None, "turns": [], "created_at": now, "updated_at": now,
                "seq": self._seq}
        return ok_response({"id": chat_id})

    def _owned_chat(self, user: str, chat_id: str | None) -> dict:
        chat = self.chats.get(chat_id or "")
        if chat is None or chat["owner"] != user:
            raise _Refusal(fail_response("Not_Found", "CHAT_NOT_FOUND", 404))
        return chat

    def _h_chat_list(self, request: Request, scenario: Scenario) -> Response:
        user = self._user(request)
        try:
            page = max(1, int(request.args.get("page", "1")))
        except ValueError:
            return fail_response("Bad_Request", "RequestValidationError: Field 'page': Input should be a valid integer")
        with self._lock:
            mine = sorted((c for c in self.chats.values() if c["owner"] == user),
                          key=lambda c: (c["updated_at"], c["seq"]), reverse=True)
        rows = mine[(page - 1) * CHATS_PER_PAGE: page * CHATS_PER_PAGE]
        return ok_response([chat_row(c) for c in rows])

    def _h_chat_detail(self, request: Request, scenario: Scenario, chat_id: str) -> Response:
        chat = self._owned_chat(self._user(request), chat_id)
        self._reveal_media(chat["id"])
        with self._lock:
            messages = copy.deepcopy(chat["messages"])
        return ok_response(chat_detail_of(chat, messages))

    def _h_delete_chat(self, request: Request, scenario: Scenario, chat_id: str) -> Response:
        chat = self._owned_chat(self._user(request), chat_id)
        with self._lock:
            self.chats.pop(chat["id"], None)
        return ok_response({"status": True})

    def _h_delete_all(self, request: Request, scenario: Scenario) -> Response:
        user = self._user(request)
        with self._lock:
            for chat_id in [k for k, c in self.chats.items() if c["owner"] == user]:
                del self.chats[chat_id]
        return ok_response({"status": True})

    def _h_stop(self, request: Request, scenario: Scenario) -> Response:
        self._user(request)
        body = request.get_json(silent=True) or {}
        keys = {request.args.get("chat_id"), body.get("chat_id"), body.get("response_id")}
        with self._lock:
            self._stops.update(k for k in keys if isinstance(k, str) and k)
        return ok_response({"status": True})

    def _h_settings(self, request: Request, scenario: Scenario) -> Response:
        self._user(request)
        return ok_response(settings_record(model_records(scenario.models)))

    # -- completions ----------------------------------------------------

    def _h_completions(self, request: Request, scenario: Scenario) -> Response:
        cookie, bearer = credentials_of(request)
        if scenario.require_cookie and bearer and not cookie:
            return json_text_response(x5sec_body(bearer))
        limit = scenario.x5sec_body_bytes
        if limit is not None and len(request.get_data(cache=True)) >= limit:
            return json_text_response(x5sec_body(new_request_id()))
        user = self._user(request)
        if scenario.require_browser_headers and missing_browser_headers(request.headers):
            return json_text_response(x5sec_body(new_request_id()))
        if scenario.require_waf_cookie and request.cookies.get(WAF_COOKIE) not in self.waf_cookies:
            return json_text_response(x5sec_body(new_request_id()))
        if scenario.require_version_header and not request.headers.get("version", "").strip():
            return fail_response("Bad_Request", "RequestValidationError: Header 'version': Field required")
        chat_id = request.args.get("chat_id")
        if not chat_id:
            return fail_response("Bad_Request", "RequestValidationError: Field 'chat_id': Field required", 400)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return fail_response("Bad_Request", "RequestValidationError: JSON decode error", 400)
        chat = self._owned_chat(user, chat_id)
        messages = body.get("messages")
        if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
            return fail_response("Bad_Request", "Invalid input too many messages")
        if messages[0].get("chat_type") in MEDIA_CHAT_TYPES:
            return self._media_turn(request, scenario, chat, body, messages[0])
        if body.get("stream") is not True:
            return fail_response("Bad_Request", INTERNAL_DETAILS)
        refusal = self._files_refusal(request, scenario, messages[0])
        return refusal if refusal is not None else self._start_turn(scenario, chat, body, messages[0])

    def _start_turn(self, scenario: Scenario, chat: dict, body: dict, message: dict) -> Response:
        """Accepts the turn: records it in the chat, then streams it."""
        scenario = self._scripted(scenario)
        features = message.get("feature_config") if isinstance(message.get("feature_config"), dict) else {}
        model_id = body.get("model") or chat["model"]
        meta = model_meta(model_records(scenario.models), model_id)
        turn = new_turn(scenario, chat["id"], message, features.get("output_schema") == "phase")
        chat_type = message.get("chat_type") or chat["chat_type"]
        if thinking_off_refused(meta, features):
            return self._sse(scenario, think_skip_frames(chat["id"], turn.parent_fid))
        thinking_on, search_on = turn_switches(features, meta, chat_type)
        self._record_turn(chat, body, message, turn, model_id, thinking_on, search_on)
        events, candidates = answer_events(scenario, turn, thinking_on, search_on)
        with self._lock:
            chat["turns"][-1]["candidates"] = candidates
        return self._sse(scenario, events, stop_keys=(chat["id"], turn.response_id))

    def _record_turn(self, chat: dict, body: dict, message: dict, turn: TurnRecord, model_id: str,
                     thinking_on: bool, search_on: bool) -> None:
        """Server-side history (§9, §10): user message, assistant message, current response id."""
        now = int(time.time())
        parent = body.get("parent_id")
        content_list = content_parts_of(turn, thinking_on, search_on)
        pair = history_messages(turn, parent, message, model_id, content_list, now)
        with self._lock:
            for old in chat["messages"]:
                if old["id"] == parent:
                    old["childrenIds"].append(turn.parent_fid)
            chat["messages"] += pair
            chat["turns"].append({"parent_id": parent, "fid": turn.parent_fid,
                                  "response_id": turn.response_id})
            chat["current_response_id"] = turn.response_id
            chat["updated_at"] = now
            self._seq += 1
            chat["seq"] = self._seq

    # -- streaming ------------------------------------------------------

    def _sse(self, scenario: Scenario, events: Iterable[Payload], stop_keys: tuple[str, ...] = ()) -> Response:
        """A 200 event-stream whose body honours every framing and timing switch of the scenario."""
        waiter = _SilentWait(self._release, getattr(self._local, "peer", None))
        body = self._stream_body(scenario, events, waiter, stop_keys)
        return Response(body, status=200, content_type=SSE_CONTENT_TYPE, direct_passthrough=True,
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _stream_body(self, scenario: Scenario, events: Iterable[Payload], release: _SilentWait,
                     stop_keys: tuple[str, ...]) -> Iterator[bytes]:
        with self._cond:
            self.open_streams += 1
        try:
            yield from self._pump(scenario, events, release, stop_keys)
        finally:
            with self._cond:
                self.open_streams -= 1
                self._cond.notify_all()

    def _pump(self, scenario: Scenario, events: Iterable[Payload], release: _SilentWait,
              stop_keys: tuple[str, ...]) -> Iterator[bytes]:
        """Writes the events; disconnect/stall limits count data events (created included)."""
        out = StreamWriter(scenario)
        previous: Payload | None = None
        for sent, payload in enumerate(self._with_done(scenario, events)):
            if limit_hit(scenario.disconnect_after_events, sent):
                frame = sse_frame(payload, scenario.line_ending)
                yield out.take() + frame[: max(1, len(frame) // 2)]
                raise _AbruptDisconnect("fake qwen: abrupt disconnect")
            if limit_hit(scenario.stall_after_events, sent):
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

    def _stall(self, release: _SilentWait) -> None:
        """Holds the connection open, interruptibly, until reset()/close()/release_stalls() or a hang-up."""
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
            return detail_response(400, "a JSON object of Scenario fields (not 'reply') is required")
        try:
            self.configure(**body)
        except (TypeError, ValueError) as exc:
            return detail_response(400, str(exc))
        return json_response(_scenario_json(self.scenario))

    def _h_ctl_reset(self, request: Request, scenario: Scenario) -> Response:
        self.reset()
        return json_response({"status": True})

    def _h_ctl_requests(self, request: Request, scenario: Scenario) -> Response:
        with self._lock:
            return json_response([r.as_dict() for r in self.requests])


def _scenario_json(scenario: Scenario) -> dict:
    return {f.name: getattr(scenario, f.name) for f in fields(scenario) if f.name != "reply"}


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
