"""``GET /metrics`` (the Prometheus text format, behind ``METRICS_KEY`` when set) and the request hooks.

The hooks time every request, count it by route and status, and end its usage
``Tally`` (``routes.usage``), which is written once its turns have ended too.
"""

from __future__ import annotations

import hmac
import time

from flask import Blueprint, Response, abort, g, request
from prometheus_client import CONTENT_TYPE_LATEST

from errors import Unauthorized
from routes import usage
from routes.gateway import gateway

bp = Blueprint("metrics", __name__)


def bearer_matches(expected: str) -> bool:
    """Whether the request's ``Authorization: Bearer`` is ``expected``, compared in constant time."""
    given = request.headers.get("Authorization", "")
    given = given[7:].strip() if given[:7].lower() == "bearer " else ""
    return hmac.compare_digest(given.encode(), expected.encode())


@bp.route("/metrics", methods=["GET"])
def metrics() -> Response:
    gw = gateway()
    if gw.settings.METRICS_KEY and not bearer_matches(gw.settings.METRICS_KEY):
        raise Unauthorized("Send the metrics key as 'Authorization: Bearer <METRICS_KEY>'.")
    if gw.metrics is None:
        abort(404)
    return Response(gw.metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)


@bp.before_app_request
def started() -> None:
    g.request_started = time.monotonic()


@bp.after_app_request
def ended(response: Response) -> Response:
    gw = gateway()
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    if gw.metrics is not None:
        gw.metrics.requests.labels(rule, str(response.status_code)).inc()
    tally = usage.current()
    if tally is not None:
        tally.request_ended(response.status_code)
    return response
