"""Emulator: the account lifecycle of the site (protocol reference §2.3, §2.4, §11).

A mixin of ``FakeQwen``: browser sessions that renew their token, the auth
host's short-lived access tokens with rotating refresh tokens, sign-in by email
and password in its three generations, and faults that hit one account only,
so pool tests can mix healthy and broken accounts.

Sign-in (§2.4): the auth host (``data.access_token`` plus a ``refresh_token``
cookie), v2 (the token only in ``Set-Cookie``) and v1 (the token in the body).
The emulator serves the auth host on the site's own port, as tests point
``QWEN_AUTH_URL`` at it: a ``POST /api/v2/auths/signin`` is the auth host's
when it carries what a browser sends across to that sibling host
(``Sec-Fetch-Site: same-site`` and ``x-request-origin``), the site's own v2
otherwise. A retired generation answers as the real one did: v1 the Aliyun 405
gateway page (the capture), the others a 404. Wrong passwords get a 401;
sign-ins past ``signin_limit`` per IP in ``signin_window`` get the WAF page for
the rest of the window, whatever the account.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import uuid
import time
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fake_qwen.wire import (
    REPLY_FAULTS, credentials_of, decode_jwt, detail_response, fail_body, fail_response, json_response, make_jwt,
    ok_response, profile_record,
)

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
    accounts: dict[str, str]
    _emails: dict[str, str]
    scenario: Any

    def _reset_signins(self) -> None:
        self.signin_attempts: dict[str, list[float]] = {}

    def add_account(self, email: str, password: str) -> str:
        """Register an account that signs in with ``password``; returns its user id."""
        with self._lock:
            self.accounts[email] = hashlib.sha256(password.encode()).hexdigest()
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"qwen:{email}"))

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

    # -- sign-in (§2.4) ----------------------------------------------------

    def _signin_gate(self, request: Request, generation: str) -> Response | None:
        """What stops a sign-in before the password is read: retirement, the per-IP limit, a fault."""
        scenario = self.scenario
        if generation not in scenario.signin_generations:
            if generation == "v1":
                return REPLY_FAULTS["gateway_html_405"](scenario)
            return detail_response(404, "Not Found")
        now = time.time()
        with self._lock:
            seen = [t for t in self.signin_attempts.get(request.remote_addr or "", []) if now - t < scenario.signin_window]
            seen.append(now)
            self.signin_attempts[request.remote_addr or ""] = seen
        if scenario.signin_limit is not None and len(seen) > scenario.signin_limit:
            return REPLY_FAULTS["waf_html"](scenario)
        body = request.get_json(silent=True) or {}
        fault = (scenario.signin_faults or {}).get(body.get("email") if isinstance(body, dict) else None)
        return REPLY_FAULTS[fault](scenario) if fault in REPLY_FAULTS else None

    def _signin(self, request: Request) -> tuple[str, dict] | None:
        """Checks {email, sha256-hex password}; returns (token, profile) on success."""
        body = request.get_json(silent=True) or {}
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or self.accounts.get(email) != password:
            return None
        user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"qwen:{email}"))
        with self._lock:
            self._emails[user_id] = email
        ttl = self.scenario.token_ttl
        token = make_jwt(user_id, ttl=ttl)
        return token, profile_record(token, decode_jwt(token) or {}, email)

    def _h_signin_v1(self, request: Request, scenario: Any) -> Response:
        refused = self._signin_gate(request, "v1")
        if refused is not None:
            return refused
        result = self._signin(request)
        if result is None:
            return detail_response(401, "The email or password provided is incorrect. "
                                        "Please check for typos and try logging in again.")
        return json_response(result[1])

    def _h_signin_v2(self, request: Request, scenario: Any) -> Response:
        if request.headers.get("sec-fetch-site") == "same-site" and request.headers.get("x-request-origin"):
            return self._auth_host_signin(request, scenario)
        refused = self._signin_gate(request, "v2")
        if refused is not None:
            return refused
        result = self._signin(request)
        if result is None:
            return json_response(fail_body("Unauthorized", "The email or password provided is incorrect."),
                                 status=401)
        token, profile = result
        record = {k: v for k, v in profile.items() if k not in ("token", "token_type", "expires_at")}
        response = ok_response(record)
        response.headers.add("Set-Cookie", f"token={token}; Path=/; Max-Age={30 * 86400}; "
                                           "HttpOnly; SameSite=Lax")
        return response

    def _auth_host_signin(self, request: Request, scenario: Any) -> Response:
        """The auth host's sign-in: a 15-minute access token in the body, the refresh token in a cookie."""
        refused = self._signin_gate(request, "auth_host")
        if refused is not None:
            return refused
        missing = [h for h in AUTH_HOST_HEADERS if not request.headers.get(h)]
        if missing:
            return fail_response("Bad_Request", f"missing headers: {', '.join(missing)}")
        result = self._signin(request)
        if result is None:
            return json_response(fail_body("Unauthorized", "The email or password provided is incorrect."),
                                 status=401)
        user_id = (decode_jwt(result[0]) or {})["id"]
        access = make_jwt(user_id, ttl=scenario.access_token_ttl)
        refresh = self.issue_refresh_token(user_id)
        response = ok_response({"access_token": access, "token_type": "Bearer",
                                "expires_in": scenario.access_token_ttl})
        response.headers.add("Set-Cookie", f"refresh_token={refresh}; Domain=.qwen.ai; Path=/; "
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
