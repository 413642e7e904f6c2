"""What the Qwen site's bytes mean: SSE framing and every refusal shape (§1.3, §1.4, §6).

Pure functions and a byte-level decoder, no I/O: ``qwen_client.client`` reads the
wire and asks this module what it read. Kept apart so the hot path (decode
an event, classify it) can be tested and measured on its own, table-driven
from the captures. Section numbers refer to ``qwen-web-protocol.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from errors import (
    ChatNotFound,
    ContentFiltered,
    InvalidRequest,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeout,
)
from qwen_client import oss

logger = logging.getLogger(__name__)

#: How much of a refusal we read to classify it; WAF pages are ~16 KiB.
MAX_ERROR_BODY = 64 * 1024


#: Risk-control challenges clear after a couple of minutes at best (§11).
CHALLENGE_COOLDOWN = 120.0


DONE = object()


class SSEDecoder:
    """Incremental ``text/event-stream`` decoder: bytes in, complete ``data`` payloads out.

    Lines end at CR, LF or CRLF, also when a CRLF straddles two reads; UTF-8 is
    left to the JSON parser, so a character cut between reads survives. Comment
    lines are ignored; text that is not SSE at all (an HTML page sent as an
    event stream) is kept in ``stray`` so the caller can say what it was.
    """

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # the unterminated line, in the pieces it came in
        self._data: list[bytes] = []
        self._skip_lf = False
        self.stray = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        # Only the new chunk is searched and split: a long line sent in many small reads
        # is joined once, when it ends, not copied and rescanned on every read.
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            if chunk:
                self._partial.append(chunk)
            return []
        lines = chunk.split(b"\n")
        lines[0] = b"".join([*self._partial, lines[0]])
        last = lines.pop()
        self._partial = [last] if last else []
        events: list[bytes] = []
        for line in lines:
            self._line(line, events)
        return events

    def iter_payloads(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Every ``data`` payload of a body read in chunks, the unterminated last one included."""
        for chunk in chunks:
            yield from self.feed(chunk)
        yield from self.finish()

    def finish(self) -> list[bytes]:
        """Flush at end of body: the site may close without a final blank line."""
        events: list[bytes] = []
        if self._partial:
            self._line(b"".join(self._partial), events)
            self._partial = []
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value[:1] == b" " else value)
        elif line[:1] != b":" and line.split(b":", 1)[0] not in (b"event", b"id", b"retry"):
            if len(self.stray) < MAX_ERROR_BODY:
                self.stray += line + b"\n"


_WAF_MARKERS = ("aliyun_waf", "aliyuncaptcha", "captcha", "人机验证", "安全验证", "punish", "x5sec", "baxia")


_CHALLENGE_CODES = ("FAIL_SYS_USER_VALIDATE", "RGV587")


_RATE_CODES = {"ratelimited", "quota_limit", "quotalimited", "parallellimited"}


#: Details that make a rate-limit code mean passing overload, not a spent quota of ``num`` hours (§8.1).
_BUSY_MARKERS = ("访问量较大", "稍后再试", "try again later", "too many requests")


def looks_like_waf(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _WAF_MARKERS)


def challenge_error(what: str) -> RateLimited:
    return RateLimited(
        f"The Qwen site challenged this account ({what}). Wait at least two minutes; if it keeps "
        "happening, open chat.qwen.ai in a browser with this account and pass the check.",
        code="upstream_challenge",
        retry_after=CHALLENGE_COOLDOWN,
    )


def shorten(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_for_code(code: str, details: str = "", num: Any = None) -> ProxyError:
    """Map a business error code of the site (§1.3, §6.6, §11) to our exception."""
    said = f"{code}: {shorten(details)}" if details else code
    lowered = code.lower()
    if any(c.lower() in lowered for c in _CHALLENGE_CODES):
        return challenge_error(said)
    if lowered == "unauthorized" or "token has expired" in details.lower():
        return UpstreamAuthError(
            f"The Qwen site refused the account's token ({said}). Copy a fresh cookie or token "
            "from a logged-in browser into the configuration."
        )
    if lowered in _RATE_CODES:
        busy = any(marker in details.lower() for marker in _BUSY_MARKERS)
        hours = num if isinstance(num, (int, float)) and num > 0 and not busy else None
        wait = f"about {hours:g} hour(s)" if hours else "a minute"
        return RateLimited(
            f"The Qwen site rate-limited this account ({said}). Retry after {wait}, or add accounts.",
            code="upstream_rate_limited",
            retry_after=hours * 3600 if hours else 60.0,
        )
    if lowered == "data_inspection_failed":
        return ContentFiltered(f"Qwen's content moderation refused this conversation ({said}). Rephrase it.")
    if lowered == "invalid_input":
        return InvalidRequest(f"The Qwen site rejected the input ({said}).", code="upstream_invalid_input")
    if lowered == "not_found" or "chat_not_found" in details.lower():
        return ChatNotFound(f"The Qwen site lost the chat of this turn ({said}). Retry.")
    return UpstreamError(f"The Qwen site refused the request ({said}).", code="upstream_" + lowered[:40])


_ERROR_KEYS = frozenset({"ret", "error", "success", "code"})


def classify_payload(obj: Any, actual_status: int | None = None) -> ProxyError | None:
    """The error an upstream JSON object stands for, or ``None`` if it is not one (§1.3, §1.4, §6.6)."""
    if not isinstance(obj, Mapping):
        return UpstreamError(f"The Qwen site sent an unexpected answer: {shorten(obj)}")
    if _ERROR_KEYS.isdisjoint(obj):
        return _delta_error(obj)  # the hot path: an ordinary stream event
    ret = obj.get("ret")
    if isinstance(ret, list) and any(c in str(r) for r in ret for c in _CHALLENGE_CODES):
        return challenge_error("x5sec/RGV587 risk control")
    error = obj.get("error")
    if error:
        if isinstance(error, Mapping):
            return error_for_code(*_code_details(error), error.get("num"))
        return UpstreamError(f"The Qwen site reported an error mid-answer: {shorten(error)}")
    if obj.get("success") is False:
        data = obj.get("data") if isinstance(obj.get("data"), Mapping) else {}
        code, details = _code_details(data) if data.get("code") else _code_details(obj)
        if code == "unknown" and actual_status:
            return error_for_status(actual_status, details)
        return error_for_code(code, details, data.get("num", obj.get("num")))
    code = obj.get("code")
    if isinstance(code, str) and any(c in code for c in _CHALLENGE_CODES):
        return challenge_error(code)
    return _delta_error(obj)


def _code_details(obj: Mapping[str, Any]) -> tuple[str, str]:
    code = obj.get("code") or obj.get("error_code") or "unknown"
    details = obj.get("details") or obj.get("detail") or obj.get("message") or ""
    return str(code), str(details)


def _delta_error(obj: Mapping[str, Any]) -> ProxyError | None:
    """The fourth in-stream form: a delta with ``status: "error"`` and ``extra.error``."""
    choices = obj.get("choices")
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        return None
    delta = choices[0].get("delta")
    if not isinstance(delta, dict) or delta.get("status") != "error":
        return None
    extra = delta.get("extra") if isinstance(delta.get("extra"), Mapping) else {}
    error = extra.get("error")
    if isinstance(error, Mapping):
        return error_for_code(*_code_details(error))
    return UpstreamError(f"The Qwen site reported an error mid-answer: {shorten(error or delta)}")


def error_for_status(status: int, body: str = "") -> ProxyError:
    """Map an HTTP error status of the site (with its body) to our exception (§6.7)."""
    if looks_like_waf(body):
        return challenge_error(f"WAF verification page, HTTP {status}")
    said = f"HTTP {status}" + (f": {shorten(body, 120)}" if body and not _is_html(body) else "")
    if status == 401:
        return UpstreamAuthError(f"The Qwen site refused the account's token ({said}). Update the cookie or token.")
    if status == 429:
        return RateLimited(f"The Qwen site is rate-limiting ({said}). Retry later.", retry_after=60.0)
    if status == 503:
        return ServiceUnavailable(f"The Qwen site is unavailable ({said}). Retry later.", retry_after=30.0)
    if status == 504:
        return UpstreamTimeout(f"The Qwen site timed out ({said}). Retry later.")
    return UpstreamError(f"The Qwen site answered {said}.", code=f"upstream_http_{status}")


def _is_html(text: str) -> bool:
    head = text.lstrip()[:64].lower()
    return head.startswith(("<!doctype", "<html")) or "<html" in head


def error_for_body(status: int, content_type: str, body: bytes, actual: str | None) -> ProxyError | None:
    """Classify a complete non-stream body; ``None`` means it is a usable JSON answer."""
    text = body.decode("utf-8", "replace")
    actual_status = int(actual) if actual and actual.isdigit() else None
    if status >= 400:
        return error_for_status(status, text)
    try:
        obj = json.loads(text)
    except ValueError:
        if text.startswith("data:"):  # a refusal sent as its only stream event (§6.7)
            frames = SSEDecoder().iter_payloads([body])
            errors = (error_for_body(status, content_type, frame, actual) for frame in frames)
            return next((e for e in errors if e is not None), None) or UpstreamError(
                "The Qwen site answered with an event stream where a JSON answer was expected.")
        if looks_like_waf(text):
            return challenge_error("WAF verification page")
        kind = "an HTML page" if _is_html(text) else f"non-JSON text ({content_type or 'no content type'})"
        return UpstreamError(f"The Qwen site answered with {kind} instead of an API response.")
    return classify_payload(obj, actual_status)


def new_chat_id(answer: Any) -> str | None:
    """The chat id wherever a ``chats/new`` answer puts it (§4: ``data.id`` now, other places seen)."""
    data = answer.get("data") if isinstance(answer, Mapping) else None
    chat = data.get("chat") if isinstance(data, Mapping) else None
    for holder in (data, chat, answer):
        if isinstance(holder, Mapping):
            for key in ("id", "chat_id"):
                if isinstance(holder.get(key), str) and holder[key]:
                    return holder[key]
    return None


def oss_error(status: int, body: str) -> ProxyError:
    """OSS refuses in XML (``<Code>SignatureDoesNotMatch</Code>``); say which refusal it was."""
    found = re.search(r"<Code>([^<]{1,64})</Code>", body)
    code = found.group(1) if found else f"HTTP {status}"
    if status >= 500:
        return ServiceUnavailable(f"Qwen's file storage failed ({code}, HTTP {status}). Retry.", retry_after=10.0)
    if code == "RequestTimeTooSkewed":
        return UpstreamError("Qwen's file storage refused the upload: this server's clock is off. Sync it (NTP).",
                             code="upstream_upload_refused", retryable=False)
    return UpstreamError(f"Qwen's file storage refused the upload ({code}, HTTP {status}). Retry; if it persists, "
                         "the site changed how uploads are signed.", code="upstream_upload_refused")


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """JSON as the web app's ``JSON.stringify`` sends it: compact, UTF-8 unescaped.

    The site's size rule counts the body (§11); ``\\uXXXX`` escapes would make
    CJK text six times longer on the wire than in the browser.
    """
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


#: The site's size rule (§11, §14): a completion body of about 128 KB of UTF-8 draws the x5sec captcha at
#: once (44,000 CJK characters, ~129 KB, were refused). Read at its harsher, decimal end.
SIZE_CAPTCHA_BYTES = 128_000


@dataclasses.dataclass(frozen=True)
class TurnLimit:
    """The largest turn body the proxy sends: bytes of the body exactly as ``encode_body`` makes it.

    ``max_chars`` is the older character cap (``MAX_TURN_CHARS``), kept for configs
    that set it; 0 turns it off. A character of CJK text is 3 bytes and an emoji 4,
    so only the byte count follows the site's rule.
    """

    max_bytes: int
    max_chars: int = 0

    def fits(self, body: bytes) -> bool:
        return len(body) <= self.max_bytes and not (self.max_chars and len(body.decode()) > self.max_chars)

    def refusal(self, body: bytes, tried: str = "") -> InvalidRequest:
        """The 400 for a turn that does not fit (``tried`` says what was tried to make it fit)."""
        if len(body) > self.max_bytes:
            size = f"{len(body):,} bytes of UTF-8, above MAX_TURN_BYTES ({self.max_bytes:,})"
        else:
            size = f"{len(body.decode()):,} characters, above MAX_TURN_CHARS ({self.max_chars:,})"
        return InvalidRequest(
            f"This conversation is too long for the Qwen site: the turn would be {size}; the site answers "
            f"bodies of about {SIZE_CAPTCHA_BYTES // 1000} KB with a captcha{tried}. Shorten or summarise the "
            "history, or start a new conversation.",
            param="messages", code="context_length_exceeded",
        )


def size_captcha(body_size: int, limit: TurnLimit) -> InvalidRequest:
    """The site's captcha on a body over its size rule, which we should not have sent: our refusal, not the account's."""
    return InvalidRequest(
        f"The Qwen site refused a turn of {body_size:,} bytes with its size captcha (about "
        f"{SIZE_CAPTCHA_BYTES // 1000} KB is the limit). Set MAX_TURN_BYTES below {SIZE_CAPTCHA_BYTES:,} "
        f"(now {limit.max_bytes:,}) so long context is sent as a document, or shorten the conversation.",
        param="messages", code="context_length_exceeded",
    )


class Candidates:
    """Which candidate answer a stream follows when the site streams two (§14): the first created.

    The translator drops the other candidate's deltas; here, its errors: an error
    event tagged with the other candidate's ``response_id`` (§6.6 errors carry one)
    ends that answer, not the one the client reads.
    """

    def __init__(self) -> None:
        self.followed: str | None = None
        self.others: set[str] = set()

    def note(self, created: Any) -> None:
        response_id = created.get("response_id") if isinstance(created, dict) else None
        if not isinstance(response_id, str) or not response_id:
            return
        if self.followed is None:
            self.followed = response_id
        elif response_id != self.followed:
            self.others.add(response_id)

    def not_followed(self, event: Mapping[str, Any]) -> bool:
        return bool(self.others) and event.get("response_id") in self.others


def decode_event(data: bytes, candidates: Candidates | None = None) -> Any:
    """One ``data`` payload: an event, ``DONE``, ``None`` (nothing to use), or the refusal it stands for raised."""
    if data.strip() == b"[DONE]":
        return DONE
    try:
        event = orjson.loads(data)  # the relay's hot path: several times faster than json
    except ValueError:
        text = data.decode("utf-8", "replace")
        if looks_like_waf(text):
            raise challenge_error("WAF verification page inside the stream") from None
        raise UpstreamError(f"The Qwen site sent an unreadable event: {shorten(text, 80)}") from None
    if not isinstance(event, dict):
        logger.debug("ignoring a stream event that is not an object")
        return None
    if candidates is not None and "response.created" in event:
        candidates.note(event["response.created"])
    error = classify_payload(event)
    if error is not None:
        if candidates is not None and candidates.not_followed(event):
            logger.info("ignoring the failure of a candidate answer not relayed: %s", error.message)
            return None
        raise error
    return event


# --------------------------------------------------------------------------- upload grants


@dataclasses.dataclass(frozen=True)
class StsGrant:
    """A ``getstsToken`` answer: temporary credentials for one object, and where that object lives (§7.1)."""

    credentials: oss.Credentials
    bucket: str
    region: str
    endpoint: str
    file_path: str
    file_url: str
    file_id: str


_GRANT_FIELDS = ("access_key_id", "access_key_secret", "security_token", "bucketname", "region", "file_path")


def parse_grant(answer: Any) -> StsGrant:
    """Either generation's answer (v2 under ``data``, v1 flat); a grant missing a field is an error, not a guess."""
    data = answer.get("data") if isinstance(answer, Mapping) and isinstance(answer.get("data"), Mapping) else answer
    data = data if isinstance(data, Mapping) else {}
    missing = [f for f in _GRANT_FIELDS if not (isinstance(data.get(f), str) and data[f])]
    if missing:
        raise UpstreamError(
            f"The Qwen site's upload grant lacks {', '.join(missing)}, so the file was not sent. Retry; "
            "if it keeps happening the site changed its upload API.",
            code="upstream_bad_upload_grant",
        )
    path = data["file_path"]
    endpoint = str(data.get("endpoint") or f"{data['region']}.aliyuncs.com")
    return StsGrant(
        credentials=oss.Credentials(data["access_key_id"], data["access_key_secret"], data["security_token"]),
        bucket=data["bucketname"], region=data["region"], endpoint=endpoint, file_path=path,
        file_url=str(data.get("file_url") or oss.object_url(data["bucketname"], path, endpoint)),
        file_id=str(data.get("file_id") or path.rsplit("/", 1)[-1].split("_", 1)[0]),
    )
