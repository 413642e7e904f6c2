"""The HTTP session of each caller of the site, and its lean path for the calls every turn makes.

``requests`` spends 0.5–0.6 ms of CPU per call on preparing, merging and validating
the browser's twenty-odd headers, settings and cookies; a turn makes three calls
(``chats/new``, the completion, the chat's ``DELETE``). ``SiteSession.send_bytes``
sends headers built by the caller and a body already encoded straight through the
session's own urllib3 pool (the same connections, proxies and TLS settings), and
hands back an ordinary ``requests.Response``: the callers read it as before, and
its failures are the same ``requests`` exceptions. Measured by ``bench.site_calls``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import requests
import urllib3
from requests.cookies import extract_cookies_to_jar, get_cookie_header
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)


#: How long the cookie header read from the jar is reused at most (an expired cookie then leaves it).
JAR_REREAD_SECONDS = 60.0


class SiteSession(requests.Session):
    """requests' session, reading proxy and CA settings from the environment once per site, not per call.

    With ``trust_env`` requests scans ``os.environ`` two or three times on every call
    (proxies, NO_PROXY, CA bundle): a fifth of the CPU of a call to the site, and every
    turn makes two. The environment does not change while the service runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[str, tuple[dict[str, str], str | None]] = {}
        #: One account's own proxy: it wins over the environment's (requests lets the environment win
        #: over ``Session.proxies``), so it is passed with every call.
        self.account_proxies: dict[str, str] | None = None
        #: ``url`` → (the jar's cookies for it, jar generation, when read): see :meth:`jar_header`.
        self._jar_headers: dict[str, tuple[str, int, float]] = {}
        self._jar_generation = 0

    def jar_header(self, url: str) -> str:
        """The ``Cookie`` value of the cookies the site has set for ``url``, re-read only when they may have changed.

        Walking the cookie jar costs about 0.1 ms and every call to the site sends
        it; it changes only when an answer sets a cookie, or when one expires (read
        again at least once a minute for that).
        """
        found = self._jar_headers.get(url)
        now = time.monotonic()
        if found is None or found[1] != self._jar_generation or now - found[2] > JAR_REREAD_SECONDS:
            value = ""
            if len(self.cookies):
                value = get_cookie_header(self.cookies, requests.Request("GET", url)) or ""
            found = self._jar_headers[url] = (value, self._jar_generation, now)
        return found[0]

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        try:
            return super().send(request, **kwargs)
        finally:
            self._jar_generation += 1  # requests' own path may have stored cookies (sign-in, renewal)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if self.account_proxies and not kwargs.get("proxies"):
            kwargs["proxies"] = self.account_proxies
        return super().request(method, url, *args, **kwargs)

    def merge_environment_settings(self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any) -> dict[str, Any]:
        if not self.trust_env or proxies or verify not in (True, None):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        found = self._settings_for(url)
        return {"proxies": merge_setting(dict(found[0]), self.proxies), "stream": merge_setting(stream, self.stream),
                "verify": merge_setting(found[1] or verify, self.verify), "cert": merge_setting(cert, self.cert)}

    def _settings_for(self, url: str) -> tuple[dict[str, str], str | None]:
        """The environment's proxies and CA bundle for the site ``url`` is on, read once."""
        origin = "/".join(url.split("/", 3)[:3])
        found = self._environment.get(origin)
        if found is None:
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            found = self._environment[origin] = (get_environ_proxies(url) if self.trust_env else {}, bundle)
        return found

    def send_bytes(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, timeout: tuple[float, float],
    ) -> requests.Response:
        """One call with ready headers and body, streamed: what ``request(..., stream=True)`` does, leaner.

        Same pool, same proxy choice (the account's, else the environment's), same
        CA bundle, cookies the site sets land in this session's jar, and failures
        raise the exceptions ``requests`` would. No redirects are followed: the
        site's API answers in place.
        """
        proxies, bundle = self._settings_for(url)
        proxies = self.account_proxies or merge_setting(dict(proxies), self.proxies)
        verify = bundle or self.verify
        prepared = requests.PreparedRequest()
        prepared.method, prepared.url, prepared.body = method, url, body
        # The session's defaults under the caller's headers, as requests merges them (Accept-Encoding above all:
        # without it http.client asks for "identity", which no browser does).
        prepared.headers = requests.structures.CaseInsensitiveDict(self.headers)
        prepared.headers.update(headers)
        if "Cookie" not in prepared.headers and (jar := self.jar_header(url)):
            prepared.headers["Cookie"] = jar  # a caller without an account (the model list): the jar, as requests
        if body is not None:
            prepared.headers["Content-Length"] = str(len(body))
        adapter = self.get_adapter(url)
        try:
            pool = adapter.get_connection_with_tls_context(prepared, verify, proxies=proxies)
            adapter.cert_verify(pool, url, verify, None)
            raw = pool.urlopen(
                method, adapter.request_url(prepared, proxies), body=body, headers=prepared.headers,
                redirect=False, assert_same_host=False, preload_content=False, decode_content=False,
                retries=False, timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            )
        except (HTTPError, OSError) as exc:
            raise as_requests_error(exc, prepared) from exc
        if "set-cookie" in raw.headers:
            extract_cookies_to_jar(self.cookies, prepared, raw)
            self._jar_generation += 1
        response = requests.Response()
        response.status_code, response.headers, response.raw = raw.status, raw.headers, raw
        response.url, response.request, response.reason = url, prepared, raw.reason
        return response


def as_requests_error(exc: HTTPError | OSError, request: requests.PreparedRequest) -> requests.RequestException:
    """The ``requests`` exception ``HTTPAdapter.send`` raises for a urllib3 failure, so one mapping serves both paths."""
    if isinstance(exc, ProxyError):
        return requests.exceptions.ProxyError(exc, request=request)
    if isinstance(exc, ConnectTimeoutError) and not isinstance(exc, NewConnectionError):
        return requests.ConnectTimeout(exc, request=request)
    if isinstance(exc, SSLError):
        return requests.exceptions.SSLError(exc, request=request)
    if isinstance(exc, ReadTimeoutError):
        return requests.ReadTimeout(exc, request=request)
    return requests.ConnectionError(exc, request=request)  # refused, reset, closed pool, protocol errors


def new_session(pool_size: int, proxy: str = "") -> SiteSession:
    """One session per account: its own cookies, its own proxy and a connection pool sized for its streams."""
    session = SiteSession()
    session.account_proxies = {"http": proxy, "https": proxy} if proxy else None
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # Environment proxies are honoured on purpose: users in some regions reach the site only so.
    session.trust_env = True
    return session
