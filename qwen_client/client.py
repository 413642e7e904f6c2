"""A ``requests``-based client of the Qwen Chat site (chat.qwen.ai).

It owns every call to the site: the browser-like headers (§1.2), the two calls
of a turn (``chats/new`` then ``chat/completions``), the answer stream read in
the background, the model list with its cache, and uploads (STS grant, signed
OSS PUT, document parsing, §7). What the site's bytes mean (SSE framing, every
refusal shape) is ``qwen_client.wire``'s. Section numbers refer to ``qwen-web-protocol.md``.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import requests
import urllib3

from errors import (
    ChatNotFound,
    EmptyResponse,
    InvalidRequest,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
    UpstreamAuthError,
    UpstreamBroken,
    UpstreamError,
    UpstreamTimeout,
)
from identity_pool import new_session
from qwen_client import oss
from qwen_client.signin import SignIn
from qwen_client.wire import (
    DONE,
    Candidates,
    MAX_ERROR_BODY,
    SIZE_CAPTCHA_BYTES,
    SSEDecoder,
    StsGrant,
    TurnLimit,
    decode_event,
    encode_body,
    error_for_body,
    new_chat_id,
    oss_error,
    parse_grant,
    shorten,
    size_captcha,
)
from transform.openai_chat import ModelInfo, new_chat_payload, parse_upstream_models

if TYPE_CHECKING:
    from config import Settings
    from identity_pool import Identity, SiteSession

logger = logging.getLogger(__name__)

#: Largest JSON answer we accept (model lists with long descriptions run to hundreds of KiB).
MAX_JSON_BODY = 16 * 1024 * 1024
_END = object()
#: Network reads the reader may run ahead of the client (a few hundred bytes each from the site):
#: bounds the memory of a stream, and how many events one write to the client can carry.
ANSWER_QUEUE_DEPTH = 64

# --------------------------------------------------------------------------- client




_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _js_date(now: float) -> str:
    """The ``timezone`` header as the web app sends it: JS ``Date().toString()`` without the zone name.

    English names whatever the server's locale, and no zone name (a browser's may be
    localised): the value stays ASCII, as §14 (front-end 0.2.81) requires.
    """
    local = time.localtime(now)
    offset = local.tm_gmtoff or 0
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return (f"{_DAYS[local.tm_wday]} {_MONTHS[local.tm_mon - 1]} {local.tm_mday:02d} {local.tm_year} "
            f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} GMT{sign}{hours:02d}{minutes:02d}")


class QwenClient:
    """Stateless calls to the site on behalf of one ``Identity`` (which owns the session)."""

    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.QWEN_BASE_URL
        self.timeout = (settings.CONNECT_TIMEOUT, settings.READ_TIMEOUT)
        self.settings = settings
        #: The largest turn body sent (§11, §14); ``Conversations`` fits turns under it, this client enforces it.
        self.turn_limit = TurnLimit(settings.MAX_TURN_BYTES, settings.MAX_TURN_CHARS)
        if settings.MAX_TURN_BYTES >= SIZE_CAPTCHA_BYTES:
            logger.warning("MAX_TURN_BYTES=%d is at or above the site's size captcha (~%d bytes): long turns "
                           "will be refused by the site instead of sent as a document", settings.MAX_TURN_BYTES,
                           SIZE_CAPTCHA_BYTES)
        # Uploads go to Aliyun OSS, another service: no account cookies, its own connections.
        self.oss_session = new_session(16)
        self.signin = SignIn(self.base_url, settings.QWEN_AUTH_URL, settings.QWEN_AUTH_VERSION, self.timeout,
                             lambda: self.headers(None, "/auth"), transport_error)

    def headers(self, identity: Identity | None, referer: str = "/", bearer: bool = True) -> dict[str, str]:
        """The browser-equivalent header set of §1.2 and §14; the site refuses writes without it.

        Like the web app (front-end 0.2.81), the account speaks through its whole
        cookie jar and no ``Authorization`` header unless ``QWEN_SEND_BEARER`` asks for one.
        """
        s = self.settings
        headers = {
            "Accept": "application/json",
            "Accept-Language": s.QWEN_ACCEPT_LANGUAGE,
            "Connection": "keep-alive",
            "Content-Type": "application/json",
            "Origin": self.base_url,
            "Referer": self.base_url + referer,
            "User-Agent": s.QWEN_USER_AGENT,
            "sec-ch-ua": s.QWEN_SEC_CH_UA,
            "sec-ch-ua-mobile": "?0",
            "sec-ch-ua-platform": '"Windows"',
            "Sec-Fetch-Dest": "empty",
            "Sec-Fetch-Mode": "cors",
            "Sec-Fetch-Site": "same-origin",
            "source": "web",
            "version": s.QWEN_VERSION,
            "bx-v": s.QWEN_BX_V,
            "timezone": _js_date(time.time()),
            "x-request-id": str(uuid.uuid4()),
            "X-Accel-Buffering": "no",
        }
        for name, value in (("bx-ua", s.QWEN_BX_UA), ("bx-umidtoken", s.QWEN_BX_UMIDTOKEN)):
            if value:
                headers[name] = value
        if identity is not None:
            if identity.token and bearer and s.QWEN_SEND_BEARER:
                headers["Authorization"] = f"Bearer {identity.token}"
            headers["Cookie"] = identity.cookie_header(self.base_url)
        return headers

    def _request(
        self, identity: Identity | None, method: str, path: str, *, json: Any = None, data: bytes | None = None,
        session: SiteSession | None = None, referer: str = "/", bearer: bool = True,
    ) -> requests.Response:
        """One call to the site, streamed: the caller reads or closes the answer (``with``)."""
        session = session or identity.session
        headers = self.headers(identity, referer, bearer)
        body = encode_body(json) if json is not None else data
        try:
            return session.send_bytes(method, self.base_url + path, headers, body, self.timeout)
        except requests.RequestException as exc:
            raise transport_error(exc) from None

    def call_json(self, identity: Identity | None, method: str, path: str, **kwargs: Any) -> Any:
        """A JSON call: any refusal shape becomes a typed exception, else the parsed body."""
        with self._request(identity, method, path, **kwargs) as resp:
            body = _read_bounded(resp, MAX_JSON_BODY if resp.status_code < 400 else MAX_ERROR_BODY)
            error = error_for_body(
                resp.status_code, resp.headers.get("Content-Type", ""), body, resp.headers.get("x-actual-status-code")
            )
        if error is not None:
            raise error
        return json.loads(body)

    def list_models(self, identity: Identity | None, session: SiteSession) -> list[ModelInfo]:
        """``/api/v2/models/``, falling back to ``/api/models`` (§3.1)."""
        last: Exception | None = None
        for path in ("/api/v2/models/", "/api/models"):
            try:
                return parse_upstream_models(self.call_json(identity, "GET", path, session=session))
            except (ProxyError, ValueError) as exc:
                logger.info("model list from %s failed: %s", path, exc)
                last = exc
        raise UpstreamError(f"Could not read the model list: {last}")

    def renew_token(self, identity: Identity) -> dict[str, Any]:
        """A fresh token for a cookie account: ``{"token", "refresh_token"}``.

        With a ``refresh_token`` cookie, the auth host renews it (§2.4);
        otherwise the session profile of the browser cookie carries it (§2.3).
        An email-and-password account signs in again when it has no refresh
        token or the auth host refuses it (§2.4).
        """
        if identity.email:
            if identity.refresh_token:
                try:
                    return self.signin.refresh(identity)
                except UpstreamAuthError:
                    logger.info("%s: the auth host refused its refresh token; signing in again", identity.label)
            return self.signin.sign_in(identity)
        if identity.refresh_token:
            return self.signin.refresh(identity)
        return {"token": self.fetch_token(identity)["token"], "refresh_token": None}

    def fetch_token(self, identity: Identity) -> dict[str, Any]:
        """The session profile of a browser cookie, which carries the token (§2.3).

        Only the cookie is sent, as the browser does (R4): a stale bearer token
        must not stand in the way of a live session. The body decides, not the
        status: a 200 without a token is a refusal.
        """
        profile = self.call_json(identity, "GET", "/api/v1/auths/", bearer=False)
        if not isinstance(profile, Mapping):
            raise UpstreamAuthError("The Qwen site answered the session profile with no profile; copy a fresh cookie.")
        data = profile.get("data") if isinstance(profile.get("data"), Mapping) else {}
        token = profile.get("token") or profile.get("access_token") or data.get("token")
        if not isinstance(token, str) or not token:
            raise UpstreamAuthError("The Qwen site did not return a token for this cookie; copy a fresh cookie.")
        return {**profile, "token": token}

    def create_chat(self, identity: Identity, model: str, chat_type: str) -> str:
        """``POST /api/v2/chats/new`` → the new chat id (§4)."""
        payload = new_chat_payload(model, chat_type, int(time.time() * 1000))
        answer = self.call_json(identity, "POST", "/api/v2/chats/new", json=payload, referer="/c/new-chat")
        chat_id = new_chat_id(answer)
        if chat_id is None:
            raise UpstreamError("The Qwen site created a chat but returned no id.")
        return chat_id

    def delete_chat(self, identity: Identity, chat_id: str) -> None:
        """``DELETE /api/v2/chats/<id>`` (§9); a chat that is already gone counts as deleted."""
        with self._request(identity, "DELETE", f"/api/v2/chats/{chat_id}") as resp:
            if resp.status_code == 204:
                return
            body = _read_bounded(resp, MAX_ERROR_BODY)
            error = error_for_body(
                resp.status_code, resp.headers.get("Content-Type", ""), body, resp.headers.get("x-actual-status-code")
            )
        if error is not None and not isinstance(error, ChatNotFound):
            raise error

    def stream_completion(self, identity: Identity, chat_id: str, payload: Mapping[str, Any]) -> AnswerStream:
        """Post one turn; its events arrive through the returned stream, its errors too (§6).

        The request is made by the stream's reader thread, so even the wait for the
        site's first byte happens where the caller can send keep-alives meanwhile.
        A body over ``turn_limit`` is refused here, before it is sent: the site would
        answer it with its size captcha (§11, §14).
        """
        body = self.encode_turn(payload)

        def post() -> requests.Response:
            return self._request(identity, "POST", f"/api/v2/chat/completions?chat_id={chat_id}",
                                 data=body, referer=f"/c/{chat_id}")

        return AnswerStream(post, chat_id, first_wait=self.settings.PING_INTERVAL_SECONDS,
                            explain=self._own_refusal(len(body)))

    def encode_turn(self, payload: Mapping[str, Any]) -> bytes:
        """A completion body as sent (compact UTF-8 JSON), refused when over ``turn_limit`` (§11, §14)."""
        body = encode_body(payload)
        if not self.turn_limit.fits(body):
            raise self.turn_limit.refusal(body)
        return body

    def _own_refusal(self, size: int) -> Callable[[Exception], Exception] | None:
        """How to read a captcha on a body over the site's size rule: as our own 400, never the account's fault.

        Only ``MAX_TURN_BYTES`` set above the rule lets such a body out; a captcha
        on a body under it is a real challenge of the account.
        """
        if size < SIZE_CAPTCHA_BYTES:
            return None
        limit = self.turn_limit
        return lambda exc: size_captcha(size, limit) if is_challenge(exc) else exc

    # -- uploads (§7) ---------------------------------------------------

    def sts_grant(self, identity: Identity, filename: str, size: int, filetype: str) -> StsGrant:
        """``getstsToken``: credentials for one new object (v2, falling back to v1 where v2 is gone)."""
        body = {"filename": filename, "filesize": str(size), "filetype": filetype}
        try:
            answer = self.call_json(identity, "POST", "/api/v2/files/getstsToken", json=body)
        except UpstreamError as exc:
            if exc.code not in ("upstream_http_404", "upstream_http_405"):
                raise
            logger.info("getstsToken v2 answered %s; trying v1", exc.code)
            answer = self.call_json(identity, "POST", "/api/v1/files/getstsToken", json=body)
        return parse_grant(answer)

    def put_object(self, grant: StsGrant, data: bytes, content_type: str,
                   proxies: dict[str, str] | None = None) -> None:
        """The OSS V4-signed PUT of the object the grant names (§7.2); path-style to QWEN_OSS_ENDPOINT if set.

        ``proxies``: the uploading account's own proxy, which every call of that account takes.
        """
        endpoint = self.settings.QWEN_OSS_ENDPOINT
        url = oss.object_url(grant.bucket, grant.file_path, endpoint or grant.endpoint, path_style=bool(endpoint))
        headers = {"Content-Type": content_type, "User-Agent": self.settings.QWEN_USER_AGENT}
        signed = oss.sign_headers("PUT", grant.bucket, grant.file_path, headers, grant.credentials, grant.region,
                                  dt.datetime.now(dt.timezone.utc))
        try:
            with self.oss_session.put(url, data=data, headers=signed, timeout=self.timeout, stream=True,
                                      proxies=proxies) as resp:
                if resp.status_code < 300:
                    return
                body = _read_bounded(resp, MAX_ERROR_BODY).decode("utf-8", "replace")
        except requests.RequestException as exc:
            raise ServiceUnavailable(
                f"Could not upload the file to Qwen's storage ({type(exc).__name__}). Retry.", retry_after=10.0
            ) from None
        raise oss_error(resp.status_code, body)

    def parse_file(self, identity: Identity, file_id: str, name: str) -> None:
        """``files/parse`` then ``parse/status`` until the document is ready; the site reads it only then (§7.3)."""
        answer = self.call_json(identity, "POST", "/api/v2/files/parse", json={"file_id": file_id})
        data = answer.get("data") if isinstance(answer, Mapping) else None
        if isinstance(data, Mapping) and data.get("code"):  # an outage, inside success:true (R14)
            raise UpstreamError(
                f"Qwen's document parser failed ({data['code']}). Retry later.", code="upstream_parse_failed"
            )
        deadline = time.monotonic() + PARSE_TIMEOUT
        for delay in _poll_delays():
            time.sleep(delay)
            answer = self.call_json(identity, "POST", "/api/v2/files/parse/status", json={"file_id_list": [file_id]})
            row = _parse_row(answer, file_id)
            status = str(row.get("status", "")).lower()
            if status in PARSE_READY:
                return
            if status in PARSE_FAILED:
                reason = shorten(row.get("error_msg") or status, 160)
                raise InvalidRequest(
                    f"Qwen could not read the document '{name}' ({reason}). Check the file, or send its text instead.",
                    code="document_parse_failed",
                )
            if time.monotonic() > deadline:
                break
        raise UpstreamTimeout(f"Qwen did not finish reading the document '{name}' in {PARSE_TIMEOUT:g} s. Retry.")


#: Parse polling: gentle, because the WAF counts these calls per IP (§7.3, R14).
PARSE_TIMEOUT = 120.0
PARSE_READY = frozenset({"success", "parsed", "done", "completed"})
PARSE_FAILED = frozenset({"failed", "error"})


def _parse_row(answer: Any, file_id: str) -> Mapping[str, Any]:
    """This file's row of a ``parse/status`` answer (``data`` is a list of ``{file_id, status}``)."""
    rows = answer.get("data") if isinstance(answer, Mapping) else None
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, Mapping) and row.get("file_id") == file_id:
            return row
    return {}


def _poll_delays() -> Iterator[float]:
    yield from (0.5, 1.0)
    while True:
        yield 2.0


class AnswerStream:
    """An answer of the site, read by a background thread into a small bounded queue.

    The request thread waits on :meth:`get` with a timeout, so it can send keep-alives
    while the site is silent: a socket read that timed out cannot be resumed, so the
    waiting happens on the queue, never on the socket. Under gunicorn's gevent worker
    the thread is a greenlet. For a turn's stream the queue holds the raw bytes as they
    came, and :meth:`get` decodes everything that has arrived at once, so a burst of
    events costs one pass. :meth:`close` ends the upstream request at once, even while
    the reader waits on a silent site: the socket is shut down under it.

    ``AnswerStream(events=...)`` puts any blocking iterator of events behind the same
    queue (it is closed, in its own thread, at its next event after :meth:`close`).
    Iterating the stream yields its events one by one, without keep-alives.
    """

    def __init__(
        self, post: Callable[[], requests.Response] | None = None, label: str = "", *,
        events: Iterator[dict] | None = None, first_wait: float | None = None,
        explain: Callable[[Exception], Exception] | None = None,
    ) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(ANSWER_QUEUE_DEPTH)
        self._response: requests.Response | None = None
        self._closed = False
        self._decoder = SSEDecoder()
        self._candidates = Candidates()
        self._seen = 0
        self._end: Any = None  # _END or the error that ended the answer, once the request thread met it
        self._held: list[dict] | None = None  # what peek() took
        self._buffer: collections.deque[dict] = collections.deque()  # what iteration has yet to hand out
        #: How long :meth:`peek` waits for the first events by default.
        self.first_wait = first_wait
        #: What the error that ended the answer means for this request (see ``QwenClient._own_refusal``).
        self._explain = explain
        target, source = (self._read, post) if post is not None else (self._pump, events)
        threading.Thread(target=target, args=(source,), name=f"answer {label}", daemon=True).start()

    def _read(self, post: Callable[[], requests.Response]) -> None:
        end: Any = _END
        resp = None
        try:
            resp = self._response = post()
            if self._closed:
                return
            _check_stream(resp)
            # chunk_size=None: each HTTP chunk as it arrives instead of waiting to fill a buffer.
            for chunk in resp.iter_content(chunk_size=None):
                self._queue.put(chunk)
                if self._closed:
                    return
        except requests.RequestException as exc:
            end = transport_error(exc)
        except Exception as exc:  # the thread's boundary: every failure goes to the request thread
            end = exc
        finally:
            if resp is not None:
                resp.close()
        if not self._closed:
            self._queue.put(end)

    def _pump(self, events: Iterator[dict]) -> None:
        end: Any = _END
        try:
            for event in events:
                self._queue.put([event])
                if self._closed:
                    return
        except Exception as exc:  # the thread's boundary, as in _read
            end = exc
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
        if not self._closed:
            self._queue.put(end)

    def get(self, timeout: float | None = None) -> list[dict] | None:
        """Every event that has arrived, waiting up to ``timeout`` seconds for the first.

        ``None`` when nothing came in time, ``[]`` once the answer has ended; the
        error that ended it is raised after the events that came before it (§6.5, §6.6).
        """
        if self._held:
            held, self._held = self._held, None
            return held
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._end is None:
            try:
                item = self._queue.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            data: list[bytes] = []
            events: list[dict] = []
            while True:  # everything that is there: events that arrived together leave together
                kind = item.__class__
                if kind is bytes:
                    data.append(item)
                elif kind is list:
                    events += item
                else:
                    self._end = item
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if data:
                events = self._decode(self._decoder.feed(b"".join(data))) + events
            if self._end is _END:
                events += self._decode(self._decoder.finish())
                if not self._seen and self._decoder.stray:
                    stray = self._decoder.stray
                    self._end = error_for_body(200, "text/event-stream", stray, None) or EmptyResponse(
                        "The Qwen site sent a stream without events.")
            if events:
                return events
        if self._end is _END:
            return []
        raise self._end if self._explain is None else self._explain(self._end)

    def _decode(self, payloads: list[bytes]) -> list[dict]:
        events = []
        for data in payloads:
            try:
                event = decode_event(data, self._candidates)
            except ProxyError as exc:
                self._end = exc
                break
            if event is DONE:
                self._end = _END
                break
            if event is not None:
                events.append(event)
        self._seen += len(events)
        return events

    def peek(self, timeout: float | None = -1.0) -> None:
        """Wait for the first events (``first_wait`` seconds by default) and keep them for the next read.

        A turn the site refuses raises here, before any output; an answer still silent
        when the wait ends raises nothing yet.
        """
        if self._held is None:
            self._held = self.get(self.first_wait if timeout == -1.0 else timeout)

    def __iter__(self) -> AnswerStream:
        return self

    def __next__(self) -> dict:
        while not self._buffer:
            events = self.get()
            if not events:
                raise StopIteration
            self._buffer.extend(events)
        return self._buffer.popleft()

    def close(self) -> None:
        """Stop reading and release the upstream connection now; any thread may call it, more than once."""
        if self._closed:
            return
        self._closed = True
        if self._response is not None:
            try:
                self._response.raw.shutdown()  # wakes a read blocked on a silent site
            except (OSError, ValueError, RuntimeError):
                pass  # already closed or back in the pool: nothing left to stop
        while True:  # free a reader blocked on a full queue; it then sees _closed and ends
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break


def _check_stream(resp: requests.Response) -> None:
    """Raise what a completion answer that is not an event stream stands for (§6.7)."""
    content_type = resp.headers.get("Content-Type", "")
    if resp.status_code >= 400 or "text/event-stream" not in content_type:
        body = _read_bounded(resp, MAX_ERROR_BODY)
        error = error_for_body(resp.status_code, content_type, body, resp.headers.get("x-actual-status-code"))
        raise error or UpstreamError("The Qwen site answered with JSON instead of a stream.")


def _read_bounded(resp: requests.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a body: enough to use or classify it, never unbounded."""
    parts, size = [], 0
    for chunk in resp.iter_content(chunk_size=65536):
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)


def is_challenge(exc: BaseException) -> bool:
    """An x5sec captcha or WAF page (§1.4): what the pool cools an account down for."""
    return isinstance(exc, RateLimited) and exc.code == "upstream_challenge"


def transport_error(exc: requests.RequestException) -> ProxyError:
    """Map a ``requests`` failure to what the client should be told."""
    reason = exc.args[0] if exc.args else None
    # urllib3's own error: wrapped in a MaxRetryError on requests' path, bare on the session's lean one.
    failure = getattr(reason, "reason", None) or reason
    connection = getattr(failure, "conn", None)  # urllib3's NewConnectionError
    if isinstance(exc, requests.exceptions.ProxyError) or "SOCKS" in type(connection).__name__:
        return ServiceUnavailable("The account's proxy refused or failed the connection. Check its proxy=.",
                                  code="proxy_unreachable", retry_after=10.0)
    if isinstance(exc, requests.ConnectTimeout):
        return ServiceUnavailable("Could not connect to the Qwen site in time. Check QWEN_BASE_URL and the network.")
    if isinstance(exc, requests.ReadTimeout) or isinstance(failure, urllib3.exceptions.ReadTimeoutError):
        return UpstreamTimeout("The Qwen site stopped sending (read timeout). Retry; long thinking may need a larger READ_TIMEOUT.")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return UpstreamBroken("The Qwen site broke off the answer mid-stream. Retry.")
    if isinstance(exc, requests.ConnectionError):
        return ServiceUnavailable("Could not reach the Qwen site. Check QWEN_BASE_URL and the network.", retry_after=10.0)
    return UpstreamError(f"Request to the Qwen site failed ({type(exc).__name__}).")
