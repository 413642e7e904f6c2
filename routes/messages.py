"""The Anthropic Messages API: ``POST /v1/messages`` (streamed or not) and ``POST /v1/messages/count_tokens``.

What Claude Code and the ``anthropic`` SDK call with ``ANTHROPIC_BASE_URL`` set to
this server. Thin like ``routes.chat``: the body becomes the chat request it means
(``transform.anthropic_messages``), runs as the same turn on the same accounts
(``routes.turns``), and the turn's OpenAI chunks become Messages events
(``transform.anthropic_stream``). Every error leaves in the Messages API's shape.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from errors import ProxyError
from routes.gateway import Gateway, authenticate, gateway, json_body, site_models
from routes.turns import SSE_HEADERS, Turn, fetch_media, open_turn, vision_model
from transform import anthropic_messages, openai_chat
from transform.anthropic_stream import EventTranslator, accumulate, encode_event, error_body

logger = logging.getLogger("qwen2openai")

bp = Blueprint("messages", __name__)

ENDPOINTS = ["POST /v1/messages", "POST /v1/messages/count_tokens"]
#: Requests under this path get Messages-shaped errors, even for routing failures (see ``app``).
PATH_PREFIX = "/v1/messages"
PING = encode_event({"type": "ping"})


@bp.post("/v1/messages")
def create_message() -> Response:
    identity = authenticate()  # x-api-key or Authorization: Bearer; anthropic-version is accepted as sent
    gw = gateway()
    asked = anthropic_messages.parse_messages_request(json_body())
    chat = asked.chat
    choice, headers = vision_model(gw, chat, _choose(gw, asked), site_models())
    headers = {"X-Qwen-Model": choice.upstream.id, **headers}
    estimate = anthropic_messages.estimate_tokens(
        anthropic_messages.prompt_text(chat, gw.settings.MAX_HISTORY_MESSAGES), chat.media)
    turn = open_turn(gw, fetch_media(gw, chat), choice, identity)
    translator = EventTranslator(f"msg_{uuid.uuid4().hex[:24]}", asked.model, asked.stop_sequences, estimate,
                                 show_thinking=asked.thinking or choice.thinking is True, prefill=asked.prefill)
    if chat.stream:
        return Response(_stream(turn, translator, gw.settings.PING_INTERVAL_SECONDS),
                        mimetype="text/event-stream", headers={**SSE_HEADERS, **headers})
    response = jsonify(_collect(turn, translator))
    response.headers.update(headers)
    return response


@bp.post("/v1/messages/count_tokens")
def count_tokens() -> Response:
    """An estimate of the prompt's tokens: the text a fresh upstream chat would get, plus media (see README)."""
    authenticate()
    gw = gateway()
    asked = anthropic_messages.parse_messages_request(json_body(), counting=True)
    _choose(gw, asked)  # an unknown model is a 404 here too
    text = anthropic_messages.prompt_text(asked.chat, gw.settings.MAX_HISTORY_MESSAGES)
    return jsonify({"input_tokens": anthropic_messages.estimate_tokens(text, asked.chat.media)})


def wants_anthropic_models() -> bool:
    """The anthropic SDK (and Claude Code) send ``anthropic-version``; they get the Models API shape."""
    return bool(request.headers.get("anthropic-version"))


def anthropic_models(model_id: str | None = None) -> Response | tuple[Response, int, dict[str, str]]:
    """``GET /v1/models`` (and ``/<id>``) for the anthropic SDK: Qwen ids, and Claude names with their target."""
    try:
        return _models(model_id)
    except ProxyError as exc:  # served from the chat blueprint, whose errors are OpenAI's
        return _proxy_error(exc)


def _models(model_id: str | None) -> Response:
    gw = gateway()
    models = site_models()
    created = {variant.lower(): m.created for m in models for variant in openai_chat.model_variants(m)}
    if model_id is None:
        return jsonify(anthropic_messages.model_page(
            [anthropic_messages.model_object(v, m.created) for m in models for v in openai_chat.model_variants(m)]))
    target = anthropic_messages.map_model(model_id, gw.settings.ANTHROPIC_MODEL_MAP)
    choice = openai_chat.resolve_model(target or gw.settings.DEFAULT_MODEL or models[0].id, models, gw.settings.DEFAULT_MODEL)
    runs_on = target or choice.upstream.id
    return jsonify(anthropic_messages.model_object(model_id.strip(), created.get(runs_on.lower(), 0), runs_on))


def _choose(gw: Gateway, asked: anthropic_messages.MessagesRequest) -> openai_chat.ModelChoice:
    """The Qwen model for a requested name: ANTHROPIC_MODEL_MAP, then Claude names → DEFAULT_MODEL."""
    models = site_models()
    s = gw.settings
    target = anthropic_messages.map_model(asked.model, s.ANTHROPIC_MODEL_MAP) or s.DEFAULT_MODEL or models[0].id
    return openai_chat.resolve_model(target, models, s.DEFAULT_MODEL)


def _collect(turn: Turn, translator: EventTranslator) -> dict[str, Any]:
    """A whole message: the same events a stream gets, added up."""
    events = translator.start()
    with turn.closing():
        for chunks in turn.batches():
            for chunk in chunks:
                events += translator.feed(chunk)
            if translator.stopped:
                break  # a stop sequence: the rest of the answer is not wanted
        events += translator.finish()
    return accumulate(events)


def _stream(turn: Turn, translator: EventTranslator, heartbeat: float | None) -> Iterator[bytes]:
    """Messages SSE: a failure after the first byte becomes an ``error`` event, and the stream ends."""
    error: Exception | None = None
    try:
        yield encode_event(translator.start()[0]) + PING
        quiet_since = time.monotonic()
        for chunks in turn.batches(heartbeat):
            events = [event for chunk in chunks for event in translator.feed(chunk)]
            if events:
                yield b"".join(encode_event(event) for event in events)
                quiet_since = time.monotonic()
            elif not chunks or (heartbeat is not None and time.monotonic() - quiet_since >= heartbeat):
                yield PING  # the site is silent, or thinking nobody sees
                quiet_since = time.monotonic()
            if translator.stopped:
                break
        yield b"".join(encode_event(event) for event in translator.finish())
    except ProxyError as exc:
        error = exc
        logger.warning("messages stream ended by upstream failure: %s", exc.message)
        yield encode_event(error_body(exc.status, exc.message))
    except Exception as exc:  # the boundary: nothing may escape after headers are sent
        error = exc
        logger.exception("messages stream failed")
        yield encode_event(error_body(500, "Internal error in the proxy while streaming."))
    finally:
        turn.close(error)


@bp.after_request
def _request_id(response: Response) -> Response:
    """``request-id``, as Anthropic sends it: the SDK shows it in errors and as ``message._request_id``."""
    response.headers.setdefault("request-id", f"req_{uuid.uuid4().hex[:24]}")
    return response


# --------------------------------------------------------------------------- errors in the Messages shape


@bp.errorhandler(ProxyError)
def _proxy_error(exc: ProxyError) -> tuple[Response, int, dict[str, str]]:
    return jsonify(error_body(exc.status, exc.message)), exc.status, exc.headers()


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[Response, int, dict[str, str]]:
    return http_error(exc.code or 500, exc.description or exc.name)


@bp.errorhandler(Exception)
def _unexpected_error(exc: Exception) -> tuple[Response, int, dict[str, str]]:
    logger.exception("unhandled error on a messages route")
    return http_error(500, "Internal error in the proxy; the server log has the details.")


def http_error(status: int, message: str) -> tuple[Response, int, dict[str, str]]:
    """A Messages-shaped error for failures outside ``ProxyError`` (routing, body size, bugs)."""
    return jsonify(error_body(status, message)), status, {"x-should-retry": "false"}
