"""WSGI middleware of the HTTP face: admission (a cap on requests at once) and the body that gives its place back."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from errors import RateLimited
from identity_pool import shared_count
from transform.anthropic_stream import error_body

if TYPE_CHECKING:
    from identity_pool import StateStore


class Admission:
    """WSGI middleware: at most ``limit`` requests at once, and a 429 at once for the next, never a wait.

    A request holds its place until its response body ends or is closed, so a
    stream counts for as long as it is open. Health checks and CORS preflights
    are never counted: a busy proxy still answers them. With ``shared`` (the
    state store, ``GLOBAL_LIMITS``) the count is every worker's and host's, each
    worker's places kept as its ``owner`` share so that they go back if it dies
    (``identity_pool.leases``).
    """

    EXEMPT_PATHS = frozenset({"/health"})
    KEY = "admission:shares"

    def __init__(self, app: Callable[..., Iterable[bytes]], limit: int, shared: StateStore | None = None,
                 owner: str = "") -> None:
        self.app, self.limit, self.shared, self.owner = app, limit, shared, owner
        self.active = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in self.EXEMPT_PATHS or environ.get("REQUEST_METHOD") == "OPTIONS":
            return self.app(environ, start_response)
        if not self._enter():
            return self._refuse(environ, start_response)
        length: list[int] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            length.extend(int(v) for k, v in headers if k.lower() == "content-length" and v.isdigit())
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, start)
        except BaseException:
            self._leave()
            raise
        return _ReleasingBody(body, self._leave, length[0] if length else None)

    def _enter(self) -> bool:
        with self._lock:
            admitted = self.active < self.limit
            if admitted:
                self.active += 1
        if admitted and self.shared is not None and self.shared.hold(self.KEY, self.owner, 1) > self.limit:
            self._leave()
            return False
        return admitted

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1
        if self.shared is not None:
            self.shared.hold(self.KEY, self.owner, -1)

    def settle(self, owner: str, how: str) -> int:
        """``Leases``' ledger: reap, restore or forget ``owner``'s places in the shared count."""
        return self.shared.settle(self.KEY, owner, how) if self.shared is not None else 0

    def _refuse(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        error = RateLimited(
            f"The proxy is serving as many requests as it is set to ({self.limit}, MAX_CONCURRENT_REQUESTS). "
            "Retry in a moment.", code="too_many_concurrent_requests", retry_after=1,
        )
        # The Anthropic SDK reads its own error shape (see routes.messages).
        shape = error_body(429, error.message) if environ.get("PATH_INFO", "").startswith("/v1/messages") \
            else error.to_dict()
        body = json.dumps(shape).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *error.headers().items()]
        if environ.get("HTTP_ORIGIN"):  # flask-cors does not see this answer; browsers must still read it
            headers += [("Access-Control-Allow-Origin", "*"),
                        ("Access-Control-Expose-Headers", "Retry-After, x-should-retry")]
        start_response("429 Too Many Requests", headers)
        return [body]

    def snapshot(self) -> dict[str, int]:
        if self.shared is None:
            return {"active": self.active, "limit": self.limit}
        return {"active": shared_count(self.shared.get(self.KEY)), "limit": self.limit, "scope": "global",
                "active_here": self.active}


class _ReleasingBody:
    """A response body that calls ``release`` once, before the client can have all of it.

    A body of known length releases as its last bytes are handed to the server; a
    streamed one when it is exhausted, which comes before the server writes the end
    of a chunked body; either releases when closed. So a client that has read a whole
    answer finds its place already free.
    """

    __slots__ = ("_body", "_iterator", "_release", "_left")

    def __init__(self, body: Iterable[bytes], release: Callable[[], None], length: int | None = None) -> None:
        self._body, self._iterator, self._left = body, iter(body), length
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> _ReleasingBody:
        return self

    def __next__(self) -> bytes:
        try:
            data = next(self._iterator)
        except StopIteration:
            self._done()
            raise
        if self._left is not None:
            self._left -= len(data)
            if self._left <= 0:
                self._done()
        return data

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done()

    def _done(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
