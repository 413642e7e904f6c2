"""The OpenAI Responses API: ``POST /v1/responses`` (streamed or not), ``GET`` and ``DELETE /v1/responses/<id>``.

A translation layer over the chat route's turn, not a second proxy: the body
becomes the chat request (``transform.openai_responses``), the same
``open_turn`` runs it (accounts, failover, continued upstream chats, tool
emulation, media), and its chunks become Responses items and events
(``transform.openai_responses_events``). Finished responses are kept in the
app's ``ResponseStore`` with their conversation, so ``previous_response_id``
continues the same upstream chat.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
from flask import Blueprint, Response, jsonify

from errors import InvalidRequest, NotFound, ProxyError, UpstreamError
from qwen_client.conversations import as_history
from routes.gateway import Gateway, authenticate, gateway, json_body, site_models
from routes.response_store import StoredResponse
from routes.turns import PING, SSE_HEADERS, Turn, fetch_media, open_turn, vision_model
from transform import generation, openai_chat, openai_responses, tool_prompts
from transform.openai_responses_events import ResponseEvents

logger = logging.getLogger("qwen2openai")

bp = Blueprint("responses", __name__)


@bp.post("/v1/responses")
@bp.post("/responses")
def create_response() -> Response:
    identity = authenticate()
    gw = gateway()
    body = json_body()
    previous = _previous(gw, body)
    request = openai_responses.parse_responses_request(
        body, previous.history if previous else (), previous.call_names() if previous else None)
    chat = request.chat
    if generation.generation_kind(chat.model):
        raise InvalidRequest(f"'{chat.model}' makes images or videos; use /v1/images/generations, /v1/videos or "
                             "/v1/chat/completions for it.", param="model", code="unsupported_model")
    models = site_models()
    choice = openai_chat.resolve_model(chat.model, models, gw.settings.DEFAULT_MODEL)
    choice, headers = vision_model(gw, chat, choice, models)
    turn = open_turn(gw, fetch_media(gw, chat), choice, identity)
    events = ResponseEvents(f"resp_{uuid.uuid4().hex}", int(time.time()), request.echo, _new_id)
    keep = _keeper(gw, request, events) if request.store else (lambda: None)
    if chat.stream:
        return Response(_stream(turn, events, keep, gw.settings.PING_INTERVAL_SECONDS),
                        mimetype="text/event-stream", headers={**SSE_HEADERS, **headers})
    with turn.closing():
        for chunks in turn.batches():
            for chunk in chunks:
                events.feed(chunk)
        events.finish()
        keep()
        response = jsonify(events.response())
    response.headers.update(headers)
    return response


@bp.get("/v1/responses/<response_id>")
@bp.get("/responses/<response_id>")
def get_response(response_id: str) -> Response:
    authenticate()
    return jsonify(_stored(response_id).response)


@bp.delete("/v1/responses/<response_id>")
@bp.delete("/responses/<response_id>")
def delete_response(response_id: str) -> Response:
    authenticate()
    if not gateway().responses.delete(response_id):
        raise _not_found(response_id)
    return jsonify({"id": response_id, "object": "response.deleted", "deleted": True})


def _stored(response_id: str) -> StoredResponse:
    record = gateway().responses.get(response_id)
    if record is None:
        raise _not_found(response_id)
    return record


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found. Responses are kept in this server's memory "
                    "for CHAT_TTL seconds when created with store=true.", param="response_id",
                    code="response_not_found")


def _previous(gw: Gateway, body: Any) -> StoredResponse | None:
    """The stored response ``previous_response_id`` names; a 400 that says so when it is not known here."""
    previous = openai_responses.previous_response_id(body)
    if previous is None:
        return None
    record = gw.responses.get(previous)
    if record is None:
        raise InvalidRequest(
            f"Previous response with id '{previous}' not found. This server keeps responses made with store=true "
            "in memory for CHAT_TTL seconds, not across restarts; send the whole conversation in 'input' instead.",
            param="previous_response_id", code="previous_response_not_found")
    return record


def _keeper(gw: Gateway, request: openai_responses.ResponsesRequest, events: ResponseEvents) -> Any:
    """Store the finished response with its conversation, answer included, as the next turn will show it."""
    def keep() -> None:
        answer = tool_prompts.fold_assistant(events.text, events.calls())
        history = (*as_history(request.chat), ("assistant", answer))
        gw.responses.put(StoredResponse(events.id, events.response(), history))
    return keep


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _stream(turn: Turn, events: ResponseEvents, keep: Any, heartbeat: float) -> Iterator[bytes]:
    """The turn as Responses SSE; after the first byte a failure ends it with ``error`` and ``response.failed``."""
    error: Exception | None = None
    try:
        yield encode_events(events.start())
        for chunks in turn.batches(heartbeat):
            if not chunks:
                yield PING
                continue
            out = [event for chunk in chunks for event in events.feed(chunk)]
            if out:
                yield encode_events(out)
        closing = events.finish()
        keep()  # before response.completed leaves: a client may send previous_response_id the moment it reads it
        yield encode_events(closing)
    except ProxyError as exc:
        error = exc
        logger.warning("response stream ended by upstream failure: %s", exc.message)
        yield encode_events(events.fail(exc.to_dict()["error"]))
    except Exception as exc:  # the boundary: nothing may escape after headers are sent
        error = exc
        logger.exception("response stream failed")
        internal = UpstreamError("Internal error in the proxy while streaming.")
        yield encode_events(events.fail(internal.to_dict()["error"]))
    finally:
        turn.close(error)


def encode_events(events: list[dict[str, Any]]) -> bytes:
    """Events as SSE, each with its ``event:`` name, in one write."""
    return b"".join(b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
                    for event in events)
