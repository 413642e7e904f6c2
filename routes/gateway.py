"""The per-app service object and what every route needs from it: the caller check and the JSON body.

``Gateway`` holds everything one app instance owns (settings, accounts, the site
client, the model cache, media I/O, conversations); ``gateway()`` finds it for the
current request. ``authenticate`` checks the caller, ``json_body`` reads the
request body and ``site_models`` the site's model list, for every blueprint alike.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Iterable
from typing import Any

import orjson
from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from config import Settings
from errors import InvalidRequest, Unauthorized
from identity_pool import Identity, IdentityPool
from qwen_client import Conversations, ModelCatalog, QwenClient, Uploader
from routes import usage as usage_counts
from routes.fetch import RemoteFetcher
from routes.metrics import Metrics
from routes.recent_errors import RecentErrors
from routes.response_store import MemoryResponseStore, ResponseStore
from transform.openai_chat import ModelInfo


@dataclasses.dataclass
class Gateway:
    """Everything one app instance owns: settings, accounts, the site client, the model cache, media I/O."""

    settings: Settings
    pool: IdentityPool
    client: QwenClient
    catalog: ModelCatalog
    uploader: Uploader
    fetcher: RemoteFetcher
    conversations: Conversations
    #: Responses kept for ``GET /v1/responses/<id>`` and ``previous_response_id``.
    responses: ResponseStore = dataclasses.field(default_factory=MemoryResponseStore)
    #: Usage per API key, account and model, in the shared store (``routes.usage``).
    usage: usage_counts.Usage | None = None
    #: The Prometheus collectors behind ``GET /metrics`` (``routes.metrics``).
    metrics: Metrics | None = None
    #: The last few failed requests, for the admin page (``routes.recent_errors``).
    recent_errors: RecentErrors | None = None


def gateway() -> Gateway:
    return current_app.extensions["qwen2openai"]


def authenticate() -> Identity | None:
    """Check the caller; in client mode, return the Qwen identity the caller brought.

    Server mode: ``Authorization: Bearer <key>`` or ``x-api-key`` against
    ``API_KEY`` (open when none is set). Client mode: ``key;token;cookie`` in either header.
    """
    settings = gateway().settings
    bearer = request.headers.get("Authorization", "")
    bearer = bearer[7:].strip() if bearer[:7].lower() == "bearer " else ""
    # Claude Code sends ANTHROPIC_API_KEY as x-api-key: client mode reads key;token;cookie there too.
    bearer = bearer or request.headers.get("x-api-key", "").strip()
    key, token, cookie = bearer, "", ""
    if not settings.SERVER_MODE and ";" in bearer:
        key, token, cookie = (bearer.split(";", 2) + ["", ""])[:3]
    key = key.strip() or request.headers.get("x-api-key", "").strip()
    matched = _matching_key(key, settings.API_KEY) if settings.API_KEY else None
    if settings.API_KEY and matched is None:
        raise Unauthorized(
            "Invalid API key." if key else
            "Missing API key. Send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header."
        )
    _count_request(settings.API_KEY_NAMES[matched] if matched is not None else usage_counts.NONE)
    if token.strip() or cookie.strip():
        return Identity(token=token.strip(), cookie=cookie.strip(), pool_size=4, label="client", ephemeral=True)
    return None


#: Posts that start no work of the site's: not counted as usage.
UNCOUNTED_ENDPOINTS = frozenset({"messages.count_tokens", "api.refresh_token"})


def _count_request(key_name: str) -> None:
    """Count this request's usage under the caller's key name: the posts that ask the site for work."""
    book = gateway().usage
    if (book is not None and request.method == "POST" and request.endpoint not in UNCOUNTED_ENDPOINTS
            and usage_counts.current() is None):
        usage_counts.begin(book.record, key_name)


def _matching_key(given: str, keys: Iterable[str]) -> int | None:
    """The index of the key ``given`` is, or ``None``; every key is compared, so timing tells nothing."""
    given_bytes = given.encode()
    found = -1
    for index, key in enumerate(keys):  # no early exit: the time taken does not depend on which key matched
        equal = hmac.compare_digest(given_bytes, key.encode())
        found = max(found, index * equal - (not equal))
    return found if found >= 0 else None


def site_models() -> list[ModelInfo]:
    gw = gateway()
    return gw.catalog.get(gw.pool.identities[0] if len(gw.pool) else None)


#: Deeper bodies are refused: no OpenAI request nests this far, and recursive code further on must not overflow.
MAX_JSON_DEPTH = 100


def json_body(required: bool = True) -> Any:
    """The request body as JSON, or a 400 that says what is wrong with it (413 when it is too large).

    Strict JSON only (orjson): ``NaN``/``Infinity``, numbers out of range, lone
    surrogates (``"\\ud800"``, which no UTF-8 text can carry) and nesting past
    ``MAX_JSON_DEPTH`` are refused here, so nothing further on meets them.
    """
    raw = _body_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM, as some Windows tools send: json took it
    if not raw.strip():
        if not required:
            return None
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if _too_deep(body, MAX_JSON_DEPTH):
        raise InvalidRequest(f"The request body nests JSON deeper than {MAX_JSON_DEPTH} levels.")
    return body


def _body_bytes() -> bytes:
    """The body; a chunked one is cut at ``MAX_CONTENT_LENGTH`` by Werkzeug, so more of it means too large."""
    raw = request.get_data(cache=False)
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(raw) >= limit:
        stream = request.environ.get("wsgi.input")
        if stream is not None and stream.read(1):
            raise RequestEntityTooLarge()
    return raw


def _too_deep(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than ``limit``; iterative, so a deep body cannot overflow it."""
    level: list[Any] = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, (dict, list))]
    return False
