"""qwen2openai: an OpenAI-compatible HTTP API in front of the Qwen Chat website.

``create_app(settings)`` builds the Flask app from the four doors: ``routes``
(the HTTP face), ``qwen_client`` (how to speak to the site), ``identity_pool``
(who speaks) and ``transform`` (what to say). Every failure is rendered here by
one handler as an OpenAI error object; ``main`` runs the development server and
``gunicorn app:app`` finds the app through this module.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import sys
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, jsonify, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from config import ConfigError, Settings, load_settings
from errors import ProxyError, echo
from identity_pool import IdentityPool, Leases, StoreError, new_session, open_store, secrets_of
from qwen_client import Conversations, ModelCatalog, QwenClient, Uploader
from routes import ENDPOINTS, Admission, Gateway, RemoteFetcher, chat_bp, gateway, images_videos_bp, messages_bp
from routes import MemoryResponseStore, Metrics, Usage, admin_api_bp, metrics_bp, responses_bp, usage_api_bp
from routes import RecentErrors, admin_page_bp
from routes.messages import PATH_PREFIX as MESSAGES_PATH
from routes.messages import http_error as messages_http_error

logger = logging.getLogger("qwen2openai")


# --------------------------------------------------------------------------- app


def create_app(settings: Settings | None = None) -> Flask:
    """Create and configure an instance of the proxy."""
    settings = settings or load_settings()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # keep OpenAI field order
    app.json.ensure_ascii = False
    client = QwenClient(settings)
    try:  # one store object for accounts, conversations, uploads and counters (README: several workers)
        state = open_store(settings)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    leases = Leases(state, settings.WORKER_LEASE_SECONDS)  # a dead worker's places in shared counts go back
    pool = IdentityPool.from_settings(settings, renewer=client.renew_token, state=state, owner=leases.worker_id)
    catalog = ModelCatalog(client, settings.MODELS_CACHE_TTL, new_session(8))
    fetcher = RemoteFetcher(allow_private=settings.ALLOW_PRIVATE_URLS, connect_timeout=settings.CONNECT_TIMEOUT)
    uploader = Uploader(client, state)
    chats = Conversations(client, settings, uploader, state, pool.find)
    responses = MemoryResponseStore(settings.CHAT_TTL, settings.MAX_CONVERSATIONS)  # Responses API, by id
    book = Usage(state)  # usage per key, account and model, and the Prometheus collectors (README: Operating)
    recent = RecentErrors()  # the admin page's list of failed requests, told by the usage book
    book.listeners.append(recent.note)
    app.extensions["qwen2openai"] = Gateway(settings, pool, client, catalog, uploader, fetcher, chats, responses,
                                            usage=book, metrics=Metrics(pool, book), recent_errors=recent)
    install_redaction(settings)
    register_routes(app, settings)
    admission = Admission(app.wsgi_app, settings.MAX_CONCURRENT_REQUESTS, state if settings.GLOBAL_LIMITS else None,
                          owner=leases.worker_id)
    app.wsgi_app = admission  # type: ignore[method-assign]
    app.extensions["qwen2openai.admission"] = admission
    if not len(pool):
        logger.warning("no Qwen account configured: chat requests will get 503 until one is (see README)")
    if settings.AUTO_REFRESH_TOKEN:
        pool.start_refresher(settings.TOKEN_REFRESH_CHECK_SECONDS)
    chats.start_janitor()  # deletes idle conversations' chats after CHAT_TTL, traffic or not
    leases.add(pool.settle_shares)
    leases.add(admission.settle)
    leases.start()  # the heartbeat; gunicorn.conf.py's worker_exit closes it (places back at once)
    app.extensions["qwen2openai.leases"] = leases
    return app


def register_routes(app: Flask, settings: Settings) -> None:
    """The HTTP face: CORS, every blueprint (the admin ones only with ``ADMIN_KEY``) and the error renderers."""
    CORS(app, expose_headers=["Retry-After", "x-should-retry", "x-request-id", "X-Model-Fallback",
                              "request-id", "X-Qwen-Model"], max_age=600)
    for blueprint in (chat_bp, images_videos_bp, responses_bp, messages_bp, metrics_bp, usage_api_bp):
        app.register_blueprint(blueprint)
    if settings.ADMIN_KEY:  # unset: no admin API at all
        app.register_blueprint(admin_api_bp)
        app.register_blueprint(admin_page_bp)
    app.register_error_handler(ProxyError, render_proxy_error)
    app.register_error_handler(HTTPException, render_http_error)
    app.register_error_handler(Exception, render_unexpected_error)


# --------------------------------------------------------------------------- secrets in logs


class RedactingFilter(logging.Filter):
    """Masks tokens, cookies and API keys in log records before any handler sees them."""

    _PATTERNS = (
        # Anchored at the start of a word run: unanchored, each "eyJ" inside one long run rescans the rest.
        (re.compile(r"(?<![\w-])eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"), "eyJ***"),
        (re.compile(r"(?i)(bearer\s+)\S+"), r"\1***"),
        (re.compile(r"(?i)(token=)[^;\s&]+"), r"\1***"),
    )

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        for secret in self.secrets:
            text = text.replace(secret, "***")
        for pattern, replacement in self._PATTERNS:
            text = pattern.sub(replacement, text)
        record.msg, record.args = text, ()
        return True


def install_redaction(settings: Settings) -> None:
    """Mask this app's secrets on every handler of the root logger, which every module's records reach."""
    secrets = [*settings.API_KEY, *settings.QWEN_TOKEN, *settings.COOKIE, settings.METRICS_KEY, settings.ADMIN_KEY]
    secrets += [v for c in settings.COOKIE for v in (p.split("=", 1)[-1] for p in c.split(";"))]
    secrets += [s for c in settings.COOKIE for s in secrets_of(c)] + [settings.ADMIN_KEY]
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(RedactingFilter(secrets))
    logging.getLogger("urllib3").setLevel(logging.WARNING)  # it logs full URLs


# --------------------------------------------------------------------------- errors


def render_proxy_error(exc: ProxyError) -> tuple[Response, int, dict[str, str]]:
    return jsonify(exc.to_dict()), exc.status, exc.headers()


def render_http_error(exc: HTTPException) -> tuple[Response, int, dict[str, str]]:
    """Flask's own 404/405/413 in OpenAI shape instead of HTML."""
    code = exc.code or 500
    if code == 404:
        message = f"Unknown route {request.method} {echo(request.path)}. Endpoints: {', '.join(ENDPOINTS)}."
    elif code == 405:
        allowed = ", ".join(sorted(exc.valid_methods or [])) if hasattr(exc, "valid_methods") else ""
        message = f"Method {request.method} is not allowed on {echo(request.path)}; use {allowed or 'another method'}."
    elif code == 413:
        limit = gateway().settings.MAX_REQUEST_MB
        message = f"The request body is larger than {limit:g} MB (MAX_REQUEST_MB)."
    else:
        message = exc.description or exc.name
    if request.path.startswith(MESSAGES_PATH):  # the Anthropic SDK reads its own error shape
        return messages_http_error(code, message)
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": exc.name.lower().replace(" ", "_")}
    return jsonify({"error": error}), code, ProxyError(message).headers()


def render_unexpected_error(exc: Exception) -> tuple[Response, int, dict[str, str]]:
    logger.exception("unhandled error on %s %s", request.method, request.path)
    error = ProxyError("Internal error in the proxy; the server log has the details.")
    return jsonify(error.to_dict()), 500, error.headers()  # a bug: an SDK's retry would only repeat it


# --------------------------------------------------------------------------- entry points


def configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def __getattr__(name: str) -> Any:
    """``gunicorn app:app`` support without building the app at import time (PEP 562)."""
    if name == "app":
        try:
            settings = load_settings()
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        configure_logging(settings.DEBUG_MODE)
        try:
            globals()["app"] = create_app(settings)
        except ConfigError as exc:  # e.g. a state store that does not answer
            print(f"configuration error: {exc}", file=sys.stderr)
            # Not SystemExit: gunicorn then reports "Worker failed to boot" and stops instead of retrying forever.
            raise RuntimeError(str(exc)) from None
        return globals()["app"]
    raise AttributeError(name)


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:  # before anything starts, so a busy port costs nothing and says what to change
        listener = listen(settings.HOST, settings.PORT)
    except OSError as exc:
        print(listen_error(settings.HOST, settings.PORT, exc), file=sys.stderr)
        return 1
    configure_logging(settings.DEBUG_MODE)
    try:
        application = create_app(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    with listener:
        server = make_server(settings.HOST, settings.PORT, application, threaded=True, fd=listener.fileno())
    logger.info("serving on http://%s:%d/v1", settings.HOST, settings.PORT)
    try:
        server.serve_forever()  # until Ctrl-C
    finally:
        close_app(application)
    return 0


def close_app(application: Flask) -> None:
    """What a stopping process owes the others (``main``, and gunicorn's ``worker_exit``).

    Its places in the shared counts go back now rather than when its lease lapses,
    and its spare chats and the chat deletions still queued go to the site now
    rather than waiting for another worker's sweep.
    """
    leases = application.extensions.get("qwen2openai.leases")
    if leases is not None:
        leases.close()
    gateway = application.extensions.get("qwen2openai")
    if gateway is not None:
        gateway.conversations.close()


def listen(host: str, port: int) -> socket.socket:
    """The development server's listening socket, bound here so that a failure is ours to explain."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


def listen_error(host: str, port: int, exc: OSError) -> str:
    """One line that names the setting to change, instead of the server library's advice."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {where}: the port is in use by another program (another copy of this "
                f"service?). Stop it, or set PORT (and HOST, if needed) to a free address.")
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: ports below 1024 need privileges. Set PORT to 1024 or above."
    return f"cannot listen on {where} ({exc.strerror or exc}). Check HOST and PORT."


if __name__ == "__main__":
    sys.exit(main())
