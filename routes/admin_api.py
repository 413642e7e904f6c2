"""The admin API: the accounts at run time (``/admin/api/accounts``), behind ``Authorization: Bearer <ADMIN_KEY>``.

- ``GET /admin/api/accounts``: every served account, masked (as ``/health`` shows it);
- ``POST /admin/api/accounts`` ``{"cookie": "<cookie, token or email:password>", "proxy": "<url>"}``:
  adds one; it serves the next turn, in every worker;
- ``DELETE /admin/api/accounts/<id>``; ``POST /admin/api/accounts/<id>/disable|enable|refresh``.

Ids are the ``id`` of the listing: a prefix of the hash that names the credential.
Changes go to the shared state store (``identity_pool.registry``), never to
``cookie.txt`` or ``config.json``. Without ``ADMIN_KEY`` none of this exists (404).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from errors import InvalidRequest, NotFound, ServiceUnavailable, Unauthorized, echo
from identity_pool import CredentialError, Identity, IdentityPool, parse_account, public_id
from routes.gateway import gateway, json_body

logger = logging.getLogger(__name__)
#: What can be done to one account (``remove`` is the API's DELETE).
ACTIONS = ("disable", "enable", "refresh", "remove")
bp = Blueprint("admin_api", __name__, url_prefix="/admin/api")


@bp.before_request
def admin_only() -> None:
    """404 without ``ADMIN_KEY`` (no admin API at all), 401 without the right bearer key (constant time)."""
    key = gateway().settings.ADMIN_KEY
    if not key:
        raise NotFound(f"Unknown route {request.method} {echo(request.path)}.")
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    if not hmac.compare_digest(token.strip().encode("utf-8", "replace"), key.encode()) or scheme.lower() != "bearer":
        raise Unauthorized("The admin API needs Authorization: Bearer <ADMIN_KEY>.", code="invalid_admin_key")


def _pool() -> IdentityPool:
    return store_pool(gateway().pool)


def store_pool(pool: IdentityPool) -> IdentityPool:
    """The pool, if it has a state store to keep run-time accounts in (else 503)."""
    if pool.registry is None:
        raise ServiceUnavailable("This instance has no state store to keep accounts in.", retryable=False)
    return pool


def _listing(pool: IdentityPool) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in entry.items() if k != "key"}, "id": entry["key"], "account_id": entry["id"]}
            for entry in pool.snapshot()["accounts"]]


def _find(pool: IdentityPool, account: str) -> Identity:
    pool.sync_accounts()
    found = next((i for i in pool.identities if public_id(i) == account), None)
    if found is None:
        raise NotFound("No account has this id; GET /admin/api/accounts lists them.", param="id",
                       code="account_not_found")
    return found


@bp.get("/accounts")
def list_accounts() -> Response:
    return jsonify({"object": "list", "data": _listing(_pool())})


def add_line(pool: IdentityPool, line: Any, proxy: Any) -> tuple[Identity, bool]:
    """Add (or update) the account of one line, with its optional proxy; the admin page adds through here too."""
    if not isinstance(line, str) or not line.strip():
        raise InvalidRequest("'cookie' must be a non-empty string: a browser cookie, a token or email:password.",
                             param="cookie")
    if proxy is not None and not isinstance(proxy, str):
        raise InvalidRequest("'proxy' must be a URL string such as http://host:port.", param="proxy")
    try:
        spec = parse_account(line, proxy or "")
    except CredentialError as exc:
        raise InvalidRequest(f"Cannot use this account: {exc}.", param="cookie") from None
    assert pool.registry is not None
    identity, fresh = pool.registry.add(spec)
    pool.sync_accounts()
    logger.info("admin: account %s %s (%s)", public_id(identity), "added" if fresh else "updated", spec.kind)
    return identity, fresh


def change(pool: IdentityPool, account: str, action: str) -> dict[str, Any]:
    """Disable, enable, refresh or remove the account with this id (the admin API's and the page's actions)."""
    if action not in ACTIONS:
        raise NotFound(f"Unknown action {echo(action)}; use disable, enable or refresh.", param="action")
    identity = _find(pool, account)
    assert pool.registry is not None
    if action == "refresh":
        result = pool.refresh_all(pool.identities.index(identity) + 1)[0]
        return {**result, "id": account}
    if action == "remove":
        pool.registry.flag(identity.key, removed=True)
        pool.sync_accounts()
        logger.info("admin: account %s removed", account)
        return {"id": account, "object": "account", "deleted": True}
    pool.registry.flag(identity.key, disabled=action == "disable")
    pool.sync_accounts()
    logger.info("admin: account %s %sd", account, action)
    return {"id": account, "object": "account", "disabled": action == "disable"}


@bp.post("/accounts")
def add_account() -> tuple[Response, int]:
    pool = _pool()
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidRequest("Send a JSON object: {\"cookie\": \"<cookie, token or email:password>\", "
                             "\"proxy\": \"<optional url>\"}.")
    identity, fresh = add_line(pool, body.get("cookie"), body.get("proxy"))
    return jsonify({"id": public_id(identity), "object": "account", "source": identity.source,
                    "created": fresh}), 201 if fresh else 200


@bp.delete("/accounts/<account>")
def delete_account(account: str) -> Response:
    return jsonify(change(_pool(), account, "remove"))


@bp.post("/accounts/<account>/<action>")
def account_action(account: str, action: str) -> Response:
    if action == "remove":  # DELETE removes; the URL's actions are these three
        raise NotFound(f"Unknown action {echo(action)}; use disable, enable or refresh.", param="action")
    return jsonify(change(_pool(), account, action))
