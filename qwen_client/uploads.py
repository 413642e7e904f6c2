"""Uploading files to the site for one account (§7): the STS grant, and the ``Uploader`` that reuses uploads.

``Uploader.upload(identity, data, filename=, content_type=)`` is the one way
bytes reach the site, whoever needs it (chat media, image edits, long context
sent as a document): ``qwen_client.client`` makes the calls (getstsToken, the signed
OSS PUT, parse polling), this module decides their order, builds the
``files[]`` entry and keeps recent uploads. Section numbers refer to
``qwen-web-protocol.md``.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from transform import media_parts

if TYPE_CHECKING:
    from identity_pool import Identity
    from qwen_client.client import QwenClient

logger = logging.getLogger(__name__)


class Uploader:
    """Puts bytes where the site can read them, on behalf of one account, and remembers recent uploads.

    ``upload`` is the one entry point (chat media, image edits, long context as
    a document): getstsToken, the signed PUT, parsing for documents, then the
    ``files[]`` entry. The same bytes for the same account are not uploaded
    again while their URL is still valid, which also spares the account's
    grant quota (~20 per window, §7.1).
    """

    #: The grant's ``file_url`` is signed for ~300 s; reuse an upload for less than that.
    TTL = 240.0
    MAX_ENTRIES = 256

    def __init__(self, client: QwenClient) -> None:
        self.client = client
        self._cache: collections.OrderedDict[tuple[str, ...], tuple[float, dict[str, Any]]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def upload(
        self, identity: Identity, data: bytes, *, filename: str, content_type: str, kind: str | None = None
    ) -> dict[str, Any]:
        """Upload ``data`` for ``identity`` and return its ``messages[0].files[]`` entry.

        ``kind`` (image, document, audio, video) defaults from ``content_type``;
        documents are parsed before this returns. Raises ``ProxyError``s.
        """
        kind = kind or media_parts.kind_of(media_parts.normalise_mime(content_type)) or "document"
        part = media_parts.MediaPart(kind, filename, "", mime=content_type, filename=filename, data=data)
        key = (identity.account_id, hashlib.sha256(data).hexdigest(), kind, filename, content_type)
        cached = self._cached(key) if identity.account_id else None
        if cached is not None:
            return cached
        grant = self.client.sts_grant(identity, filename, len(data), media_parts.STS_FILETYPE[kind])
        self.client.put_object(grant, data, content_type)
        if kind == "document":
            self.client.parse_file(identity, grant.file_id, filename)
        entry = media_parts.file_entry(part, file_id=grant.file_id, url=grant.file_url, task_id=str(uuid.uuid4()),
                                 now_ms=int(time.time() * 1000), parsed=kind == "document")
        logger.info("%s: uploaded %s %s (%d bytes)", identity.label, kind, grant.file_id, len(data))
        if identity.account_id:
            self._remember(key, entry)
        return copy.deepcopy(entry)

    def forget(self) -> None:
        """Drop every remembered upload (the site lost them, or in tests, was reset)."""
        with self._lock:
            self._cache.clear()

    def _cached(self, key: tuple[str, ...]) -> dict[str, Any] | None:
        with self._lock:
            found = self._cache.get(key)
            if found is None or found[0] < time.monotonic():
                self._cache.pop(key, None)
                return None
            self._cache.move_to_end(key)
            return copy.deepcopy(found[1])

    def _remember(self, key: tuple[str, ...], entry: dict[str, Any]) -> None:
        with self._lock:
            self._cache[key] = (time.monotonic() + self.TTL, copy.deepcopy(entry))
            self._cache.move_to_end(key)
            while len(self._cache) > self.MAX_ENTRIES:
                self._cache.popitem(last=False)
