"""The OpenAI chat API and the service's own endpoints: ``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/``.

Routes are thin: they check the caller, validate the body with ``transform``,
open a turn with ``routes.turns`` and return JSON or a stream. ``-image``,
``-image_edit`` and ``-video`` chats are handed to ``routes.images_videos``.
"""

from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, jsonify, request

from config import __version__
from errors import InvalidRequest, ModelNotFound, echo
from routes.gateway import authenticate, gateway, json_body, site_models
from routes import messages
from routes.images_videos import generation_chat
from routes.turns import SSE_HEADERS, fetch_media, open_turn, sse, vision_model
from transform import generation, openai_chat

bp = Blueprint("api", __name__)

ENDPOINTS = [
    "GET /v1/models", "GET /v1/models/<id>", "POST /v1/chat/completions", "POST /v1/images/generations",
    "POST /v1/images/edits", "POST /v1/videos", "GET /v1/videos/<id>", "GET /v1/videos/<id>/content", "GET /health",
    "POST /refresh-token",
    "POST /v1/responses", "GET /v1/responses/<id>", "DELETE /v1/responses/<id>",
    *messages.ENDPOINTS,
]


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
        serving = accounts["total"] - accounts.get("disabled", 0)  # a disabled account is the operator's choice
        status = "ok" if usable == serving else "degraded" if usable else "down"
    state = gw.pool.state.describe()
    if state.get("status") == "degraded" and status == "ok":
        status = "degraded"  # this worker answers from its own memory: /health says so
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
        "state": state,
        "workers": current_app.extensions["qwen2openai.leases"].snapshot(),
        "worker": os.getpid(),  # which process answered: every worker gives the same counts
    })


@bp.post("/refresh-token")
def refresh_token() -> Response:
    """Renew every account's token now, or one: ``{"account": 2}`` (the number in ``account-2``)."""
    authenticate()
    gw = gateway()
    body = json_body(required=False)
    number = body.get("account", request.args.get("account")) if isinstance(body, dict) else None
    if number is not None:
        try:
            number = int(number) if isinstance(number, int) or str(number).strip().isascii() else 0
        except (TypeError, ValueError, OverflowError):
            number = 0
        if not 1 <= number <= len(gw.pool):
            raise InvalidRequest(f"'account' must be a number from 1 to {len(gw.pool)} (as in account-1).",
                                 param="account")
    results = gw.pool.refresh_all(number)
    return jsonify({"object": "list", "data": results})


@bp.get("/v1/models")
@bp.get("/models")
def listsite_models() -> tuple[Response, int, dict[str, str]] | Response:
    authenticate()
    if messages.wants_anthropic_models():  # the anthropic SDK's client.models.list()
        return messages.anthropic_models()
    models = site_models()
    # Say where the list came from: the site, or the built-in list when the site is unreachable.
    headers = {"X-Models-Source": gateway().catalog.source}
    return jsonify({"object": "list", "data": openai_chat.openai_model_list(models)}), 200, headers


@bp.get("/v1/models/<path:model_id>")
@bp.get("/models/<path:model_id>")
def get_model(model_id: str) -> Response | tuple[Response, int, dict[str, str]]:
    authenticate()
    if messages.wants_anthropic_models():
        return messages.anthropic_models(model_id)
    for entry in openai_chat.openai_model_list(site_models()):
        if entry["id"].lower() == model_id.lower():
            return jsonify(entry)
    raise ModelNotFound(f"The model '{echo(model_id)}' does not exist; GET /v1/models lists them.", param="model")


@bp.post("/v1/chat/completions")
@bp.post("/chat/completions")
def chat_completions() -> Response:
    identity = authenticate()
    chat = openai_chat.parse_chat_request(json_body())
    if generation.generation_kind(chat.model) and not _is_site_model(chat.model):  # -image, -image_edit, -video
        return generation_chat(chat, identity)
    gw = gateway()
    models = site_models()
    choice = openai_chat.resolve_model(chat.model, models, gw.settings.DEFAULT_MODEL)
    choice, headers = vision_model(gw, chat, choice, models)
    turn = open_turn(gw, fetch_media(gw, chat), choice, identity)
    if chat.stream:
        return Response(sse(turn, gw.settings.PING_INTERVAL_SECONDS), mimetype="text/event-stream",
                        headers={**SSE_HEADERS, **headers})
    with turn.closing():
        response = jsonify(turn.collect())
    response.headers.update(headers)
    return response


def _is_site_model(model_id: str) -> bool:
    return any(m.id.lower() == model_id.strip().lower() for m in site_models())
