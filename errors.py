"""The one exception hierarchy of the proxy; every error a client sees starts here.

Each class carries the HTTP meaning of its failure (status, OpenAI ``type`` and
``code``) so that ``app`` renders all of them with a single handler, and the
``openai`` SDK maps them to its own exception classes::

    ProxyError
    ├── InvalidRequest        400  bad JSON, fields or content the site cannot take
    ├── ContentFiltered       400  the site's moderation refused the input or output
    ├── Unauthorized          401  missing or wrong API key
    ├── NotFound              404  unknown route
    │   └── ModelNotFound     404  unknown model id
    ├── RateLimited           429  upstream quota, throttling or risk-control challenge
    ├── UpstreamError         502  the site answered with something we cannot use
    │   ├── UpstreamAuthError      the account's token was refused
    │   ├── ChatNotFound           the upstream chat of the turn is gone (deleted, other account)
    │   ├── EmptyResponse          the site accepted the turn but produced nothing
    │   └── UpstreamBroken         the stream broke off mid-way
    ├── ModelOutputInvalid    502  the model broke the tool-call or JSON contract, even when corrected
    ├── ServiceUnavailable    503  no account configured, or the site is down
    └── UpstreamTimeout       504  the site stopped sending
"""

from __future__ import annotations

import reprlib
from typing import Any

#: The longest ``Retry-After`` (seconds) with which an SDK may retry at once: the official SDKs sleep
#: for it, twice by default, so anything longer says ``x-should-retry: false`` and is left to callers
#: that schedule their work. It is the rule for every answer of ours, kept here in one place.
QUICK_RETRY_SECONDS = 2

#: How much of a client's value an error message quotes back.
ECHO_LIMIT = 60
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = ECHO_LIMIT
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 3, 3


def echo(value: Any, limit: int = ECHO_LIMIT) -> str:
    """A value the client sent, as an error message quotes it: a short prefix with an ellipsis.

    Every message that repeats input goes through here, so a 10 MB model name
    gets a 404 of a few hundred bytes, not of 10 MB.
    """
    text = value if isinstance(value, str) else _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ProxyError(Exception):
    """Base class: a failure with an HTTP status and an OpenAI error body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    #: Whether retrying the same request elsewhere could help (drives ``x-should-retry``).
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error object, as both plain responses and stream events carry it."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """Headers that tell the SDKs whether and when to retry.

        ``x-should-retry: true`` only when an immediate automatic retry can help: the
        failure is retryable and over within ``QUICK_RETRY_SECONDS``. A challenge, a
        spent quota or a long cool-down says ``false`` (the official Node SDK would
        otherwise sleep for any ``Retry-After``, three hours for a spent daily quota),
        while ``Retry-After`` still tells schedulers the honest time.
        """
        retry_after = None if self.retry_after is None else max(1, int(self.retry_after + 0.999))
        quick = self.retryable and (retry_after is None or retry_after <= QUICK_RETRY_SECONDS)
        headers = {"x-should-retry": "true" if quick else "false"}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return headers


class InvalidRequest(ProxyError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class ContentFiltered(ProxyError):
    status, type, code = 400, "invalid_request_error", "content_policy_violation"


class Unauthorized(ProxyError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class NotFound(ProxyError):
    status, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RateLimited(ProxyError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"
    retryable = True


class UpstreamError(ProxyError):
    status, type, code = 502, "upstream_error", "upstream_error"
    retryable = True


class UpstreamAuthError(UpstreamError):
    code = "upstream_unauthorized"
    retryable = False


class ChatNotFound(UpstreamError):
    code = "upstream_not_found"




class EmptyResponse(UpstreamError):
    code = "upstream_empty_response"


class UpstreamBroken(UpstreamError):
    code = "upstream_stream_broken"


class ModelOutputInvalid(ProxyError):
    """The model broke the tool-call or JSON contract, even after a corrective turn.

    Not an ``UpstreamError``: the account did nothing wrong, so the pool neither
    counts it against the account nor fails over to another one.
    """

    status, type, code = 502, "upstream_error", "model_output_invalid"
    retryable = False  # already corrected once; an automatic retry would double the load for little


class ServiceUnavailable(ProxyError):
    status, type, code = 503, "server_error", "service_unavailable"
    retryable = True


class UpstreamTimeout(ProxyError):
    status, type, code = 504, "timeout_error", "upstream_timeout"
    retryable = True
