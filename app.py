"""qwen2openai: an OpenAI-compatible HTTP API in front of the Qwen Chat website.

``create_app(settings)`` builds the Flask app; routes are thin: they check the
caller, validate the body with ``transform``, open a turn with ``turns``
and return JSON or a stream. Every failure is rendered by one handler as an
OpenAI error object.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

import conversations
import generation
import transform
from config import ConfigError, Settings, load_settings
from errors import (
    InvalidRequest,
    ModelNotFound,
    ProxyError,
    RateLimited,
    Unauthorized,
)
from fetch import RemoteFetcher
from identity_pool import Identity, IdentityPool
from qwen_client import ModelCatalog, QwenClient, new_session
from turns import SSE_HEADERS, fetch_media, open_turn, sse, vision_model
from uploads import Uploader

__version__ = "0.1.0"
logger = logging.getLogger("qwen2openai")
bp = Blueprint("api", __name__)

ENDPOINTS = [
    "GET /v1/models", "GET /v1/models/<id>", "POST /v1/chat/completions", "POST /v1/images/generations",
    "POST /v1/images/edits", "POST /v1/videos", "GET /v1/videos/<id>", "GET /v1/videos/<id>/content", "GET /health",
    "POST /refresh-token",
]
_OUR_LOGGERS = ("qwen2openai", "qwen_client", "qwen_wire", "identity_pool", "token_store", "config", "transform", "uploads", "fetch",
                "cdn", "qwen_generation")


# --------------------------------------------------------------------------- app


@dataclasses.dataclass
class Gateway:
    """Everything one app instance owns: settings, accounts, the site client, the model cache, media I/O."""

    settings: Settings
    pool: IdentityPool
    client: QwenClient
    catalog: ModelCatalog
    uploader: Uploader
    fetcher: RemoteFetcher
    conversations: conversations.Conversations


def create_app(settings: Settings | None = None) -> Flask:
    """Create and configure an instance of the proxy."""
    settings = settings or load_settings()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # keep OpenAI field order
    app.json.ensure_ascii = False
    client = QwenClient(settings)
    pool = IdentityPool.from_settings(settings, renewer=client.renew_token)
    catalog = ModelCatalog(client, settings.MODELS_CACHE_TTL, new_session(8))
    fetcher = RemoteFetcher(allow_private=settings.ALLOW_PRIVATE_URLS, connect_timeout=settings.CONNECT_TIMEOUT)
    uploader = Uploader(client)
    chats = conversations.Conversations(client, settings, uploader)
    app.extensions["qwen2openai"] = Gateway(settings, pool, client, catalog, uploader, fetcher, chats)
    install_redaction(settings)
    CORS(app, expose_headers=["Retry-After", "x-should-retry", "x-request-id", "X-Model-Fallback"], max_age=600)
    app.register_blueprint(bp)
    from generation_routes import bp as generation_bp  # it builds on this module's helpers, so it is imported late

    app.register_blueprint(generation_bp)
    app.register_error_handler(ProxyError, render_proxy_error)
    app.register_error_handler(HTTPException, render_http_error)
    app.register_error_handler(Exception, render_unexpected_error)
    admission = Admission(app.wsgi_app, settings.MAX_CONCURRENT_REQUESTS)
    app.wsgi_app = admission  # type: ignore[method-assign]
    app.extensions["qwen2openai.admission"] = admission
    if not len(pool):
        logger.warning("no Qwen account configured: chat requests will get 503 until one is (see README)")
    if settings.AUTO_REFRESH_TOKEN:
        pool.start_refresher(settings.TOKEN_REFRESH_CHECK_SECONDS)
    return app


def gateway() -> Gateway:
    return current_app.extensions["qwen2openai"]


# --------------------------------------------------------------------------- secrets in logs


class RedactingFilter(logging.Filter):
    """Masks tokens, cookies and API keys in log records before any handler sees them."""

    _PATTERNS = (
        (re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"), "eyJ***"),
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
    secrets = [*settings.API_KEY, *settings.QWEN_TOKEN, *settings.COOKIE]
    secrets += [v for c in settings.COOKIE for v in (p.split("=", 1)[-1] for p in c.split(";"))]
    for name in _OUR_LOGGERS:
        log = logging.getLogger(name)
        for old in [f for f in log.filters if isinstance(f, RedactingFilter)]:
            log.removeFilter(old)
        log.addFilter(RedactingFilter(secrets))
    logging.getLogger("urllib3").setLevel(logging.WARNING)  # it logs full URLs


# --------------------------------------------------------------------------- admission


class Admission:
    """WSGI middleware: at most ``limit`` requests at once, and a 429 at once for the next, never a wait.

    A request holds its place until its response body ends or is closed, so a
    stream counts for as long as it is open. Health checks and CORS preflights
    are never counted: a busy proxy still answers them.
    """

    EXEMPT_PATHS = frozenset({"/health"})

    def __init__(self, app: Callable[..., Iterable[bytes]], limit: int) -> None:
        self.app, self.limit = app, limit
        self.active = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in self.EXEMPT_PATHS or environ.get("REQUEST_METHOD") == "OPTIONS":
            return self.app(environ, start_response)
        with self._lock:
            admitted = self.active < self.limit
            if admitted:
                self.active += 1
        if not admitted:
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

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1

    def _refuse(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        error = RateLimited(
            f"The proxy is serving as many requests as it is set to ({self.limit}, MAX_CONCURRENT_REQUESTS). "
            "Retry in a moment.", code="too_many_concurrent_requests", retry_after=1,
        )
        body = json.dumps(error.to_dict()).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *error.headers().items()]
        if environ.get("HTTP_ORIGIN"):  # flask-cors does not see this answer; browsers must still read it
            headers += [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "Retry-After")]
        start_response("429 Too Many Requests", headers)
        return [body]

    def snapshot(self) -> dict[str, int]:
        return {"active": self.active, "limit": self.limit}


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


# --------------------------------------------------------------------------- errors


def render_proxy_error(exc: ProxyError) -> tuple[Response, int, dict[str, str]]:
    return jsonify(exc.to_dict()), exc.status, exc.headers()


def render_http_error(exc: HTTPException) -> tuple[Response, int, dict[str, str]]:
    """Flask's own 404/405/413 in OpenAI shape instead of HTML."""
    code = exc.code or 500
    if code == 404:
        message = f"Unknown route {request.method} {request.path}. Endpoints: {', '.join(ENDPOINTS)}."
    elif code == 405:
        allowed = ", ".join(sorted(exc.valid_methods or [])) if hasattr(exc, "valid_methods") else ""
        message = f"Method {request.method} is not allowed on {request.path}; use {allowed or 'another method'}."
    elif code == 413:
        limit = gateway().settings.MAX_REQUEST_MB
        message = f"The request body is larger than {limit:g} MB (MAX_REQUEST_MB)."
    else:
        message = exc.description or exc.name
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": exc.name.lower().replace(" ", "_")}
    return jsonify({"error": error}), code, {"x-should-retry": "false"}


def render_unexpected_error(exc: Exception) -> tuple[Response, int]:
    logger.exception("unhandled error on %s %s", request.method, request.path)
    error = ProxyError("Internal error in the proxy; the server log has the details.")
    return jsonify(error.to_dict()), 500


# --------------------------------------------------------------------------- auth


def authenticate() -> Identity | None:
    """Check the caller; in client mode, return the Qwen identity the caller brought.

    Server mode: ``Authorization: Bearer <key>`` or ``x-api-key`` against
    ``API_KEY`` (open when none is set). Client mode: ``Bearer key;token;cookie``.
    """
    settings = gateway().settings
    bearer = request.headers.get("Authorization", "")
    bearer = bearer[7:].strip() if bearer[:7].lower() == "bearer " else ""
    key, token, cookie = bearer, "", ""
    if not settings.SERVER_MODE and ";" in bearer:
        key, token, cookie = (bearer.split(";", 2) + ["", ""])[:3]
    key = key.strip() or request.headers.get("x-api-key", "").strip()
    if settings.API_KEY and not _key_matches(key, settings.API_KEY):
        raise Unauthorized(
            "Invalid API key." if key else
            "Missing API key. Send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header."
        )
    if token.strip() or cookie.strip():
        return Identity(token=token.strip(), cookie=cookie.strip(), pool_size=4, label="client", ephemeral=True)
    return None


def _key_matches(given: str, keys: Iterable[str]) -> bool:
    given_bytes = given.encode()
    matched = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        matched |= hmac.compare_digest(given_bytes, key.encode())
    return matched


# --------------------------------------------------------------------------- routes


@bp.get("/")
def index() -> Response:
    return jsonify({
        "name": "qwen2openai",
        "version": __version__,
        "description": "OpenAI-compatible API for Qwen Chat (chat.qwen.ai).",
        "endpoints": ENDPOINTS,
    })


@bp.get("/health")
def health() -> Response:
    """Liveness plus the pool at a glance; masked, so it is safe to leave open."""
    gw = gateway()
    accounts = gw.pool.snapshot()
    usable = accounts["healthy"] + accounts["degraded"]
    if not accounts["total"]:
        status = "no_account"
    else:
        status = "ok" if usable == accounts["total"] else "degraded" if usable else "down"
    s = gw.settings
    return jsonify({
        "status": status,
        "version": __version__,
        "server_mode": s.SERVER_MODE,
        "auth": "api_key" if s.API_KEY else "open",
        "config": {
            "auto_refresh_token": s.AUTO_REFRESH_TOKEN,
            "token_store": bool(s.TOKEN_STORE_FILE),
            "failover_retries": s.FAILOVER_RETRIES,
            "account_max_concurrency": s.ACCOUNT_MAX_CONCURRENCY,
            "pool_failure_threshold": s.POOL_FAILURE_THRESHOLD,
        },
        "accounts": accounts,
        "models": gw.catalog.snapshot(),
        "requests": current_app.extensions["qwen2openai.admission"].snapshot(),
    })


@bp.post("/refresh-token")
def refresh_token() -> Response:
    """Renew every account's token now, or one: ``{"account": 2}`` (the number in ``account-2``)."""
    authenticate()
    gw = gateway()
    raw = request.get_data(cache=False)
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    number = body.get("account", request.args.get("account")) if isinstance(body, dict) else None
    if number is not None:
        try:
            number = int(number)
        except (TypeError, ValueError):
            number = 0
        if not 1 <= number <= len(gw.pool):
            raise InvalidRequest(f"'account' must be a number from 1 to {len(gw.pool)} (as in account-1).",
                                 param="account")
    results = gw.pool.refresh_all(number)
    return jsonify({"object": "list", "data": results})


@bp.get("/v1/models")
@bp.get("/models")
def list_models() -> tuple[Response, int, dict[str, str]]:
    authenticate()
    models = _models()
    # Say where the list came from: the site, or the built-in list when the site is unreachable.
    headers = {"X-Models-Source": gateway().catalog.source}
    return jsonify({"object": "list", "data": transform.openai_model_list(models)}), 200, headers


@bp.get("/v1/models/<path:model_id>")
@bp.get("/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    authenticate()
    for entry in transform.openai_model_list(_models()):
        if entry["id"].lower() == model_id.lower():
            return jsonify(entry)
    raise ModelNotFound(f"The model '{model_id}' does not exist; GET /v1/models lists them.", param="model")


@bp.post("/v1/chat/completions")
@bp.post("/chat/completions")
def chat_completions() -> Response:
    identity = authenticate()
    chat = transform.parse_chat_request(_json_body())
    if generation.generation_kind(chat.model) and not _is_site_model(chat.model):  # -image, -image_edit, -video
        from generation_routes import generation_chat

        return generation_chat(chat, identity)
    gw = gateway()
    models = _models()
    choice = transform.resolve_model(chat.model, models, gw.settings.DEFAULT_MODEL)
    choice, headers = vision_model(gw, chat, choice, models)
    turn = open_turn(gw, fetch_media(gw, chat), choice, identity)
    if chat.stream:
        return Response(sse(turn, gw.settings.PING_INTERVAL_SECONDS), mimetype="text/event-stream",
                        headers={**SSE_HEADERS, **headers})
    error: ProxyError | None = None
    try:
        response = jsonify(turn.collect())
        response.headers.update(headers)
        return response
    except ProxyError as exc:
        error = exc
        raise
    finally:
        turn.close(error)


def _models() -> list[transform.ModelInfo]:
    gw = gateway()
    return gw.catalog.get(gw.pool.identities[0] if len(gw.pool) else None)


def _is_site_model(model_id: str) -> bool:
    return any(m.id.lower() == model_id.strip().lower() for m in _models())


def _json_body() -> Any:
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None


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
        globals()["app"] = create_app(settings)
        return globals()["app"]
    raise AttributeError(name)


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.DEBUG_MODE)
    application = create_app(settings)
    logger.info("serving on http://%s:%d/v1", settings.HOST, settings.PORT)
    application.run(host=settings.HOST, port=settings.PORT, threaded=True, debug=False, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
