"""The per-app service object and what every route needs from it: the caller check and the JSON body.

``Gateway`` holds everything one app instance owns (settings, accounts, the site
client, the model cache, media I/O, conversations); ``gateway()`` finds it for the
current request. ``authenticate`` checks the caller, ``json_body`` reads the
request body and ``site_models`` the site's model list, for every blueprint alike.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from collections.abc import Iterable
from typing import Any

from flask import current_app, request

from config import Settings
from errors import InvalidRequest, Unauthorized
from identity_pool import Identity, IdentityPool
from qwen_client import Conversations, ModelCatalog, QwenClient, Uploader
from routes.fetch import RemoteFetcher
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


def site_models() -> list[ModelInfo]:
    gw = gateway()
    return gw.catalog.get(gw.pool.identities[0] if len(gw.pool) else None)


def json_body() -> Any:
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
