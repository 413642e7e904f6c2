"""``GET /admin/api/usage``: usage per API key, account and model, today and over 7 days, for scripts and the admin page.

Behind ``Authorization: Bearer <ADMIN_KEY>``; without ``ADMIN_KEY`` the route does
not exist (404), so an unconfigured proxy shows nothing of its operators' figures.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, abort, jsonify, request

from errors import Unauthorized
from routes.gateway import gateway

bp = Blueprint("usage_api", __name__)


@bp.route("/admin/api/usage", methods=["GET"])
def usage_summary() -> Response:
    gw = gateway()
    admin_key = gw.settings.ADMIN_KEY
    if not admin_key:
        abort(404)
    given = request.headers.get("Authorization", "")
    given = given[7:].strip() if given[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), admin_key.encode()):
        raise Unauthorized("Send the admin key as 'Authorization: Bearer <ADMIN_KEY>'.")
    return jsonify(gw.usage.summary())
