"""``GET /admin/api/usage``: usage per API key, account and model, today and over 7 days (scripts, the admin page).

Behind ``Authorization: Bearer <ADMIN_KEY>``; without ``ADMIN_KEY`` the route does
not exist (404), so an unconfigured proxy shows nothing of its operators' figures.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify

from errors import Unauthorized
from routes.gateway import gateway
from routes.metrics_api import bearer_matches

bp = Blueprint("usage_api", __name__)


@bp.route("/admin/api/usage", methods=["GET"])
def usage_summary() -> Response:
    gw = gateway()
    admin_key = gw.settings.ADMIN_KEY
    if not admin_key or gw.usage is None:
        abort(404)
    if not bearer_matches(admin_key):
        raise Unauthorized("Send the admin key as 'Authorization: Bearer <ADMIN_KEY>'.")
    return jsonify(gw.usage.summary())
