"""``GET /admin``: the operator's page (server-rendered, no script), behind a sign-in with ``ADMIN_KEY``.

Sign-in sets an HttpOnly, SameSite=Strict session cookie (Secure over https); the
session lives in the shared store (``admin_sessions``), so every worker knows it and
logging out ends it everywhere. Every form carries the session's CSRF token, checked on
every POST, and a POST from another origin is refused. The account actions call the
admin API's own functions (``admin_api.add_line``, ``admin_api.change``) and redirect
back (POST-redirect-GET). Without ``ADMIN_KEY`` the page does not exist (404).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, redirect, render_template, request

from errors import ProxyError
from identity_pool import StoreError
from routes.admin_api import add_line, change, store_pool
from routes.admin_sessions import COOKIE, SESSION_TTL, AdminSessions
from routes.admin_view import page_data, tokens
from routes.gateway import gateway

logger = logging.getLogger(__name__)
bp = Blueprint("admin_page", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static", static_url_path="/static")

#: What a redirect may say happened (a fixed word in the URL, never text a client wrote).
NOTICES = {"added": "Account added.", "updated": "Account updated.", "disable": "Account disabled.",
           "enable": "Account enabled.", "refresh": "Account renewed.", "remove": "Account removed.",
           "refresh-failed": "Renewal failed: see the account's last failure.", "out": "Logged out."}
SECURITY_HEADERS = {
    "Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}


@bp.app_template_filter("utc")
def utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _https() -> bool:
    """Over https, here or at the reverse proxy in front (``X-Forwarded-Proto``): the cookie is then Secure."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.is_secure or forwarded == "https"


@bp.errorhandler(StoreError)
def store_down(exc: StoreError) -> Response:
    logger.warning("admin page: the state store failed: %s", exc)
    return _page("error.html", 503, message="The state store does not answer: try again shortly.")


def _sessions() -> AdminSessions:
    gw = gateway()
    return AdminSessions(gw.pool.state, gw.settings.ADMIN_KEY)


@bp.before_request
def guard() -> Response | None:
    """No page without ``ADMIN_KEY``; no POST from another site (its Origin, when sent, must be ours)."""
    if not gateway().settings.ADMIN_KEY:
        abort(404)
    origin = request.headers.get("Origin")
    if request.method == "POST" and origin is not None and urlsplit(origin).netloc != request.host:
        return _page("error.html", 403, message="This form was sent from another site.")
    return None


@bp.after_request
def harden(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _page(template: str, status: int = 200, **context: Any) -> Response:
    # The worker that drew the page, as /health says it: which process answered is worth knowing under gunicorn.
    html = render_template(f"admin/{template}", worker=os.getpid(), **context)
    return Response(html, status, mimetype="text/html")


def _session() -> tuple[str, dict[str, Any]] | None:
    token = request.cookies.get(COOKIE)
    found = _sessions().find(token)
    return (token, found) if token and found else None


def _checked() -> tuple[str, dict[str, Any]] | Response:
    """The session of a POST whose CSRF token matches, or the 403 page."""
    current = _session()
    if current is None:
        return _page("error.html", 403, message="Your session has ended: log in again.")
    if not AdminSessions.csrf_ok(current[1], request.form.get("csrf")):
        return _page("error.html", 403, message="This form is stale or not ours: reload the page and try again.")
    return current


def _dashboard(session: dict[str, Any], status: int = 200, error: str | None = None) -> Response:
    gw = gateway()
    data = page_data(gw.pool, gw.usage, gw.metrics, gw.catalog.source, gw.recent_errors)
    return _page("page.html", status, csrf=session["csrf"], error=error, tokens=tokens,
                 notice=NOTICES.get(request.args.get("done", "")), **data)


@bp.get("")
@bp.get("/")
def page() -> Response:
    current = _session()
    if current is None:
        return _page("login.html", notice=NOTICES.get(request.args.get("done", "")))
    return _dashboard(current[1])


@bp.post("/login")
def login() -> Response:
    sessions, client = _sessions(), request.remote_addr or "-"
    if sessions.throttled(client):
        response = _page("login.html", 429, error="Too many wrong keys: wait a few minutes.")
        response.headers["Retry-After"] = "300"
        return response
    if not sessions.key_matches(request.form.get("key", "")):
        sessions.failed(client)
        logger.warning("admin page: wrong key from %s", client)
        return _page("login.html", 401, error="That is not the admin key.")
    response = redirect("/admin", 303)
    response.set_cookie(COOKIE, sessions.open(), max_age=SESSION_TTL, path="/admin", httponly=True,
                        samesite="Strict", secure=_https())
    return response


@bp.post("/logout")
def logout() -> Response:
    current = _checked()
    if isinstance(current, Response):
        return current
    _sessions().close(current[0])
    response = redirect("/admin?done=out", 303)
    response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="Strict", secure=_https())
    return response


@bp.post("/accounts")
def add_account() -> Response:
    current = _checked()
    if isinstance(current, Response):
        return current
    try:
        pool = store_pool(gateway().pool)
        _identity, fresh = add_line(pool, request.form.get("cookie"), request.form.get("proxy") or None)
    except ProxyError as exc:
        return _dashboard(current[1], exc.status, error=exc.message)
    return redirect(f"/admin?done={'added' if fresh else 'updated'}", 303)


@bp.post("/accounts/<account>/<action>")
def account_action(account: str, action: str) -> Response:
    current = _checked()
    if isinstance(current, Response):
        return current
    try:
        result = change(store_pool(gateway().pool), account, action)
    except ProxyError as exc:
        return _dashboard(current[1], exc.status, error=exc.message)
    done = "refresh-failed" if result.get("result") == "failed" else action
    return redirect(f"/admin?done={done}", 303)
