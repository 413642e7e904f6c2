"""The auth host and sign-in: renewing with a refresh token, and signing in by email and password (§2.4).

The site has had three sign-ins: the auth host (``QWEN_AUTH_URL``, a 15-minute
``access_token`` in the body and a rotating ``refresh_token`` cookie), v2 on the
site (the token only in ``Set-Cookie``) and v1 (the token in the body). Each is
tried in that order while the previous one is gone (404, 405, a gateway page, an
answer without a token). A refusal of the password, the WAF page or a rate limit
stops at once: those say something about the account or this IP, and hammering
the next generation would only prolong the site's sign-in ban.

The password travels only as its SHA-256 (what the site takes); nothing here logs
it, and no error message contains it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

import requests

from errors import ProxyError, RateLimited, UpstreamAuthError, UpstreamError
from identity_pool import Identity
from qwen_client.wire import MAX_ERROR_BODY, error_for_body

logger = logging.getLogger(__name__)

Headers = Callable[[], dict[str, str]]
#: A sign-in that met the WAF page or a limit waits this long (the site's ban lasts "several minutes", §2.4).
SIGNIN_BAN_SECONDS = 360.0


class SignIn:
    """Refresh-token renewal and email-and-password sign-in over an account's own session (and so its proxy)."""

    def __init__(self, base_url: str, auth_url: str, auth_version: str, timeout: tuple[float, float],
                 headers: Headers, transport_error: Callable[[requests.RequestException], ProxyError]) -> None:
        self.base_url, self.auth_url, self.auth_version = base_url, auth_url, auth_version
        self.timeout, self.headers, self.transport_error = timeout, headers, transport_error

    def sign_in(self, identity: Identity) -> dict[str, Any]:
        """``{"token", "refresh_token"}`` from the newest generation that answers; raises what stopped it."""
        body = {"email": identity.email, "password": identity.password_sha256}
        last: ProxyError | None = None
        for generation in ("auth_host", "v2", "v1"):
            try:
                answer = self._attempt(identity, generation, body)
            except _Gone as gone:
                logger.info("%s: sign-in %s is not available (%s); trying the next one", identity.label,
                            generation, gone.error.code)
                last = gone.error
                continue
            logger.info("%s: signed in (%s)", identity.label, generation)
            return answer
        raise UpstreamError(f"No sign-in of the Qwen site answered for {identity.label} (last: {last}). "
                            "Use a browser cookie for this account instead.", code="signin_unavailable")

    def refresh(self, identity: Identity) -> dict[str, Any]:
        """``GET <QWEN_AUTH_URL>/api/v2/auths/refresh`` with the refresh cookie (§2.4).

        The refresh token rotates: the answer's new one replaces the old,
        which then no longer works, so the caller must keep it.
        """
        headers = self.headers()
        headers.update({"Cookie": f"refresh_token={identity.refresh_token}", "version": self.auth_version,
                        "x-request-origin": self.base_url, "Sec-Fetch-Site": "same-site",
                        "Referer": self.base_url + "/"})
        try:
            with identity.session.get(self.auth_url + "/api/v2/auths/refresh", headers=headers,
                                      timeout=self.timeout, stream=True) as resp:
                body = _read(resp, MAX_ERROR_BODY)
                status, content_type = resp.status_code, resp.headers.get("Content-Type", "")
                cookie = resp.cookies.get("refresh_token")
        except requests.RequestException as exc:
            raise self.transport_error(exc) from None
        error = error_for_body(status, content_type, body, None)
        if status == 401 or isinstance(error, UpstreamAuthError):
            raise UpstreamAuthError("The auth host refused the refresh token; sign in again in a browser "
                                    "and copy a fresh cookie.")
        if error is not None:
            raise error
        data = json.loads(body).get("data") or {}
        token = data.get("access_token") if isinstance(data, Mapping) else None
        if not isinstance(token, str) or not token:
            raise UpstreamAuthError("The auth host answered without an access token; copy a fresh cookie.")
        return {"token": token, "refresh_token": data.get("refresh_token") or cookie}

    def _attempt(self, identity: Identity, generation: str, body: dict[str, str]) -> dict[str, Any]:
        headers = self.headers()
        if generation == "auth_host":
            url = self.auth_url + "/api/v2/auths/signin"
            headers.update({"version": self.auth_version, "x-request-origin": self.base_url,
                            "Sec-Fetch-Site": "same-site", "Referer": self.base_url + "/auth"})
        else:
            url = f"{self.base_url}/api/{generation}/auths/signin"
            headers["Referer"] = self.base_url + "/auth"
        try:
            with identity.session.post(url, json=body, headers=headers, timeout=self.timeout, stream=True) as resp:
                raw = _read(resp, MAX_ERROR_BODY)
                status, content_type = resp.status_code, resp.headers.get("Content-Type", "")
                set_cookies = resp.raw.headers.getlist("Set-Cookie") if resp.raw is not None else []
        except requests.RequestException as exc:
            raise self.transport_error(exc) from None
        error = error_for_body(status, content_type, raw, None)
        if error is not None:
            raise _refusal(identity, error)
        answer = json.loads(raw)
        token, refresh = _tokens(answer, _cookies(set_cookies))
        if not token:
            raise _Gone(UpstreamError("the sign-in answered without a token", code="signin_no_token"))
        return {"token": token, "refresh_token": refresh}


class _Gone(Exception):
    """This generation does not answer any more: the next one is tried."""

    def __init__(self, error: ProxyError) -> None:
        super().__init__(error.message)
        self.error = error


def _refusal(identity: Identity, error: ProxyError) -> Exception:
    """What a failed sign-in means: a wrong password, the WAF or a limit (stop), or a retired route (next)."""
    if isinstance(error, UpstreamAuthError):
        return UpstreamAuthError(
            f"The Qwen site refused the email and password of {identity.label}: fix the line in cookie.txt "
            "(or use a browser cookie for it).", code="signin_refused", retryable=False)
    if isinstance(error, RateLimited):
        return RateLimited(
            f"Signing {identity.label} in met the site's {'WAF page' if error.code == 'upstream_challenge' else 'limit'}"
            f" (about 12 sign-ins per IP in 6 minutes); it waits {SIGNIN_BAN_SECONDS / 60:.0f} minutes. "
            "Other accounts go on serving; give this one its own proxy if it keeps happening.",
            code="signin_limited", retry_after=SIGNIN_BAN_SECONDS)
    return _Gone(error)  # 404, 405, a gateway page, a 5xx or a changed request: the next generation may answer


def _read(resp: requests.Response, limit: int) -> bytes:
    chunks, size = [], 0
    for chunk in resp.iter_content(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _cookies(headers: list[str]) -> dict[str, str]:
    """``Set-Cookie`` values read by hand: the auth host sets ``Domain=.qwen.ai``, which a jar may drop."""
    found: dict[str, str] = {}
    for header in headers:
        try:
            parsed = SimpleCookie(header)
        except CookieError:
            continue
        found.update({name: morsel.value for name, morsel in parsed.items()})
    return found


def _tokens(answer: Any, cookies: Mapping[str, str]) -> tuple[str, str | None]:
    """The token and refresh token wherever a generation puts them (§2.4)."""
    answer = answer if isinstance(answer, Mapping) else {}
    data = answer.get("data") if isinstance(answer.get("data"), Mapping) else {}
    for token in (data.get("access_token"), cookies.get("token"), data.get("token"), answer.get("token"),
                  answer.get("access_token")):
        if isinstance(token, str) and token:
            refresh = data.get("refresh_token") or cookies.get("refresh_token")
            return token, refresh if isinstance(refresh, str) and refresh else None
    return "", None
