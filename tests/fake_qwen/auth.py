"""Emulator: the account lifecycle of the site (protocol reference §2.3, §2.4, §11).

A mixin of ``FakeQwen``: browser sessions that renew their token, the auth
host's short-lived access tokens with rotating refresh tokens, and faults that
hit one account only, so pool tests can mix healthy and broken accounts.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fake_qwen.wire import credentials_of, decode_jwt, fail_response, json_response, make_jwt

#: (method, path, handler, fault endpoint) of the routes this mixin serves.
AUTH_ROUTES = (
    # The auth host (https://auth.qwen.ai); tests point QWEN_AUTH_URL at the emulator itself.
    ("GET", "/api/v2/auths/refresh", "auth_refresh", "auths"),
)
#: Headers the auth host insists on (§2.4: version, x-request-origin, source, sec-fetch-site).
AUTH_HOST_HEADERS = ("version", "x-request-origin", "source")
ACCOUNT_FAULT_ENDPOINTS = frozenset({"completions"})


class AuthMixin:
    """Session renewal, refresh tokens and per-account faults; state lives on the ``FakeQwen``."""

    _lock: threading.RLock
    sessions: dict[str, str]
    invalid_tokens: set[str]
    refresh_tokens: dict[str, str]
    scenario: Any

    def issue_refresh_token(self, user_id: str) -> str:
        """A refresh token for ``user_id`` as the auth host sets it in its cookie (30 days)."""
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self.refresh_tokens[token] = user_id
        return token

    def _valid_claims(self, token: str | None) -> dict | None:
        claims = decode_jwt(token) if token else None
        if claims is None or token in self.invalid_tokens or claims["exp"] <= time.time():
            return None
        return claims

    def _session_token(self, request: Request) -> str | None:
        """The token of the browser session cookie, renewed when half its life is gone."""
        sid = request.cookies.get("qwen_session", "")
        with self._lock:
            token = self.sessions.get(sid)
            if token is None or not self.scenario.session_renewal:
                return token
            claims = decode_jwt(token)
            ttl = self.scenario.token_ttl
            if claims is not None and self._valid_claims(token) and claims["exp"] - time.time() > ttl / 2:
                return token
            user_id = claims["id"] if claims else "fake-session-user"
            self.sessions[sid] = token = make_jwt(user_id, ttl=ttl)
            return token

    def _profile_token(self, request: Request) -> tuple[str, dict] | None:
        """The credential a profile call answers with.

        With session renewal on, a live browser session wins and hands out its
        (renewed) token; otherwise the first valid of cookie token, bearer, session.
        """
        cookie, bearer = credentials_of(request)
        candidates = (cookie, bearer, self._session_token(request))
        if self.scenario.session_renewal and request.cookies.get("qwen_session") in self.sessions:
            candidates = candidates[2:]
        for token in candidates:
            claims = self._valid_claims(token)
            if claims is not None:
                return token, claims
        return None

    def _h_auth_refresh(self, request: Request, scenario: Any) -> Response:
        missing = [h for h in AUTH_HOST_HEADERS if not request.headers.get(h)]
        if missing or request.headers.get("sec-fetch-site") != "same-site":
            return fail_response("Bad_Request", f"missing or wrong headers: {', '.join(missing) or 'sec-fetch-site'}")
        old = request.cookies.get("refresh_token", "")
        with self._lock:
            user_id = self.refresh_tokens.pop(old, None)  # rotation: a refresh token works once
        if user_id is None:
            return json_response({"success": False, "data": {"code": "Unauthorized",
                                                     "details": "Refresh token is invalid or expired."}},
                         status=401)
        access = make_jwt(user_id, ttl=scenario.access_token_ttl)
        new = self.issue_refresh_token(user_id)
        response = json_response({"success": True, "data": {"access_token": access, "refresh_token": new,
                                                    "expires_in": scenario.access_token_ttl}})
        response.headers.add("Set-Cookie", f"refresh_token={new}; Domain=.qwen.ai; Path=/; "
                                           f"Max-Age={30 * 86400}; HttpOnly; Secure; SameSite=Lax")
        return response

    def _account_fault(self, request: Request, kind: str) -> str | None:
        """The fault configured for the account behind a completion request, if any."""
        faults = self.scenario.account_faults
        if not faults or kind not in ACCOUNT_FAULT_ENDPOINTS:
            return None
        cookie, bearer = credentials_of(request)
        for token in (cookie, bearer):
            claims = decode_jwt(token) if token else None
            if claims is not None:
                return faults.get(claims["id"])
        return None
