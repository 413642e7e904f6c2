"""The HTTP face: the blueprints, the per-app service object and the middleware ``app.create_app`` assembles.

- ``gateway``: ``Gateway`` (what one app instance owns), ``gateway()``,
  ``authenticate`` (API keys, client mode), ``json_body`` and ``site_models``.
- ``chat``: ``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/refresh-token`` and ``/``.
- ``images_videos``: ``/v1/images/generations``, ``/v1/images/edits``,
  ``/v1/videos`` and the ``-image``/``-video`` chat models.
- ``messages``: the Anthropic Messages API, ``/v1/messages`` and ``/v1/messages/count_tokens``.
- ``turns``: the life of one turn (account, uploads, upstream answer) and its SSE.
- ``hangup``: noticing a client that hung up while the site is silent (a look at its socket).
- ``middleware``: ``Admission``, the cap on requests at once, and the body that gives its place back.
- ``fetch``: ``RemoteFetcher``, fetching the URLs clients send, guarded against this server's own network.
- ``responses``: the OpenAI Responses API (``/v1/responses``) over the same turns as chat.
- ``response_store``: ``ResponseStore`` and its in-process ``MemoryResponseStore``, the stored responses.
- ``admin_api``: ``/admin/api/accounts``, the accounts at run time, behind ``ADMIN_KEY``.
- ``usage``: ``Usage`` (requests, errors, tokens, pictures and clips per API key, account, model and
  hour, in the shared store) and ``Tally``, one request's figures, written once when it ends.
- ``metrics``: ``Metrics``, the Prometheus collectors (multi-process under gunicorn), and
  ``track_turn``, which ties a turn to them and to the request's usage.
- ``metrics_api``: ``GET /metrics`` and the request hooks that count every request.
- ``usage_api``: ``GET /admin/api/usage`` (behind ``ADMIN_KEY``).
- ``admin_page``: ``GET /admin``, the operator's page (Jinja templates in ``templates/admin/``, CSS in
  ``static/``), its sign-in and its account forms; ``admin_sessions``: ``AdminSessions``, its sessions,
  CSRF tokens and sign-in throttle in the shared store; ``admin_view``: what the page shows and its
  server-drawn chart; ``recent_errors``: ``RecentErrors``, the last failed requests.

``app`` uses the names exported here.
"""

from routes.admin_api import bp as admin_api_bp
from routes.admin_page import bp as admin_page_bp
from routes.chat import ENDPOINTS
from routes.chat import bp as chat_bp
from routes.fetch import RemoteFetcher
from routes.gateway import Gateway, gateway
from routes.images_videos import bp as images_videos_bp
from routes.messages import bp as messages_bp
from routes.metrics import Metrics
from routes.metrics_api import bp as metrics_bp
from routes.middleware import Admission
from routes.recent_errors import RecentErrors
from routes.response_store import MemoryResponseStore
from routes.responses import bp as responses_bp
from routes.usage import Usage
from routes.usage_api import bp as usage_api_bp

__all__ = ["ENDPOINTS", "Admission", "Gateway", "MemoryResponseStore", "Metrics", "RecentErrors", "RemoteFetcher", "Usage",
           "admin_api_bp", "admin_page_bp",
           "chat_bp", "gateway", "images_videos_bp", "messages_bp", "metrics_bp", "responses_bp", "usage_api_bp"]
