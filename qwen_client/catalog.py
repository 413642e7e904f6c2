"""The site's model list as the proxy serves it: cached with a TTL, the built-in list only when the site is unreachable.

Apart from ``client`` because it is state (the cache, its source, when to ask
again) while the client is stateless calls; ``/v1/models`` and every turn's
model resolution read it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import requests

from errors import ProxyError
from transform.openai_chat import BUILTIN_MODELS, ModelInfo

if TYPE_CHECKING:
    from identity_pool import Identity
    from qwen_client.client import QwenClient

logger = logging.getLogger(__name__)


class ModelCatalog:
    """The site's model list, cached with a TTL; the built-in list only when the site is unreachable."""

    #: After a failed fetch, wait this long before asking the site again.
    RETRY_AFTER_FAILURE = 60.0

    def __init__(self, client: QwenClient, ttl: float, session: requests.Session) -> None:
        self.client, self.ttl, self.session = client, ttl, session
        self._models: list[ModelInfo] = []
        self._source = "not loaded"
        self._expires = 0.0
        self._lock = threading.Lock()

    def get(self, identity: Identity | None = None) -> list[ModelInfo]:
        with self._lock:
            if time.monotonic() >= self._expires:
                self._refresh(identity)
            return self._models

    def _refresh(self, identity: Identity | None) -> None:
        try:
            self._models = self.client.list_models(identity, self.session)
            self._source, self._expires = "upstream", time.monotonic() + self.ttl
        except ProxyError as exc:
            logger.warning("cannot load the model list (%s); %s", exc.message,
                           "keeping the previous one" if self._models else "using the built-in list")
            if not self._models or self._source == "builtin":
                self._models, self._source = list(BUILTIN_MODELS), "builtin"
            self._expires = time.monotonic() + self.RETRY_AFTER_FAILURE

    @property
    def source(self) -> str:
        return self._source

    def snapshot(self) -> dict[str, Any]:
        return {"source": self._source, "count": len(self._models)}
