"""Uploading files to the site for one account (§7): the STS grant, and the ``Uploader`` that reuses uploads.

``Uploader.upload(identity, data, filename=, content_type=)`` is the one way
bytes reach the site, whoever needs it (chat media, image edits, long context
sent as a document): ``qwen_client.client`` makes the calls (getstsToken, the signed
OSS PUT, parse polling), this module decides their order, builds the
``files[]`` entry and keeps recent uploads. Section numbers refer to
``qwen-web-protocol.md``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from identity_pool import MemoryStore
from transform import media_parts

if TYPE_CHECKING:
    from identity_pool import Identity, StateStore
    from qwen_client.client import QwenClient

logger = logging.getLogger(__name__)


class Uploader:
    """Puts bytes where the site can read them, on behalf of one account, and remembers recent uploads.

    ``upload`` is the one entry point (chat media, image edits, long context as
    a document): getstsToken, the signed PUT, parsing for documents, then the
    ``files[]`` entry. The same bytes for the same account are not uploaded
    again while their URL is still valid, which also spares the account's
    grant quota (~20 per window, §7.1). Recent uploads are kept in the shared
    state store, so every worker reuses them.
    """

    #: The grant's ``file_url`` is signed for ~300 s; reuse an upload for less than that.
    TTL = 240.0

    def __init__(self, client: QwenClient, state: StateStore | None = None) -> None:
        self.client = client
        self.state = state if state is not None else MemoryStore()
        self._epoch = "0"  # the same in every worker; ``forget`` starts a new one in this worker

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
        self.client.put_object(grant, data, content_type, proxies=identity.proxies)
        if kind == "document":
            self.client.parse_file(identity, grant.file_id, filename)
        entry = media_parts.file_entry(part, file_id=grant.file_id, url=grant.file_url, task_id=str(uuid.uuid4()),
                                 now_ms=int(time.time() * 1000), parsed=kind == "document")
        logger.info("%s: uploaded %s %s (%d bytes)", identity.label, kind, grant.file_id, len(data))
        if identity.account_id:
            self._remember(key, entry)
        return copy.deepcopy(entry)

    def forget(self) -> None:
        """Stop reusing this worker's earlier uploads (the site lost them, or in tests, was reset)."""
        self._epoch = uuid.uuid4().hex[:8]

    def _key(self, key: tuple[str, ...]) -> str:
        return f"upload:{self._epoch}:" + hashlib.sha256("\0".join(key).encode()).hexdigest()

    def _cached(self, key: tuple[str, ...]) -> dict[str, Any] | None:
        found = self.state.get(self._key(key))
        return found if isinstance(found, dict) else None

    def _remember(self, key: tuple[str, ...], entry: dict[str, Any]) -> None:
        self.state.put(self._key(key), entry, ttl=self.TTL)
