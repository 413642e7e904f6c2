"""Upstream chats: creating them, posting turns into them, and continuing them later.

``UpstreamChat`` is one chat on the site, on one account, and the turns one
request posts into it (the turn itself, then maybe a corrective one).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import transform

if TYPE_CHECKING:
    from identity_pool import Identity
    from qwen_client import QwenClient

logger = logging.getLogger("qwen2openai.conversations")


class UpstreamChat:
    """One chat on the site, on one account: created (or continued) once, then posted into."""

    def __init__(
        self, client: QwenClient, identity: Identity, model: str, chat_type: str, config: Mapping[str, Any],
        chat_id: str | None = None,
    ) -> None:
        self.client, self.identity = client, identity
        self.model, self.chat_type, self.config = model, chat_type, dict(config)
        self.chat_id = chat_id

    def create(self) -> str:
        """``chats/new`` (§4)."""
        self.chat_id = self.client.create_chat(self.identity, self.model, self.chat_type)
        return self.chat_id

    def payload(
        self, content: str, parent_id: str | None = None, files: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        return transform.completion_payload(
            model=self.model, chat_id=self.chat_id or "", content=content, chat_type=self.chat_type,
            config=self.config, fid=str(uuid.uuid4()), timestamp=int(time.time()), parent_id=parent_id,
            files=files,
        )

    def post(
        self, content: str, parent_id: str | None = None, files: Sequence[Mapping[str, Any]] = ()
    ) -> Iterator[dict]:
        """One turn into this chat; ``parent_id`` is the response it answers (§10)."""
        payload = self.payload(content, parent_id, files)
        return self.client.stream_completion(self.identity, self.chat_id or "", payload)
