"""Chats made ahead of need: a new conversation's first byte waits for one call to the site, not two.

``chats/new`` is free, unmetered and not gated by version or fingerprint, and a
chat takes turns long after it was made (protocol §4, §10); one peer keeps a
pre-warmed pool of chat ids for the same reason (peers-and-clients, Y). So for
each (account, model, chat type) a request asked for, one spare chat is made
right after the previous one is taken: the same calls as before, only earlier,
and off the request's path.

Spares must not become the leftover chats the site is suspected of punishing
(§14). Each one is put in the shared store's deletion queue, due ``ttl`` after
it was made; if nobody takes it (traffic stopped, its worker died), whichever
worker sweeps next deletes it upstream. Taking a spare takes it out of that
queue; a spare close to its due time is left to the sweep, not used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from errors import ProxyError

if TYPE_CHECKING:
    from identity_pool import Identity
    from qwen_client.client import QwenClient

logger = logging.getLogger(__name__)

#: How long an unused spare lives before it is deleted upstream.
SPARE_SECONDS = 600.0

SpareKey = tuple[str, str, str]  # account, model, chat type


class HeldChats(Protocol):
    """The shared deletion queue a spare waits in (``ConversationStore``)."""

    def hold(self, account: str, chat_id: str, ttl: float) -> None: ...

    def take_held(self, chat_id: str) -> bool: ...


class SpareChats:
    """At most one spare chat per (account, model, chat type), made after a new chat's turn is accepted."""

    def __init__(
        self, client: QwenClient, store: HeldChats, account_of: Callable[[Identity], str],
        ttl: float = SPARE_SECONDS, enabled: bool = True, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.store, self._account_of = client, store, account_of
        self.ttl, self.enabled, self._clock = ttl, enabled, clock
        self._spares: dict[SpareKey, tuple[str, float]] = {}  # key → (chat id, when made)
        self._making: set[SpareKey] = set()
        self._lock = threading.Condition()
        self._closed = False

    def take(self, identity: Identity, model: str, chat_type: str) -> str | None:
        """A spare chat for this turn, or ``None``."""
        if not self.enabled or identity.ephemeral:
            return None
        with self._lock:
            found = self._spares.pop((self._account_of(identity), model, chat_type), None)
        if found is None:
            return None
        chat_id, made = found
        if self._clock() - made > self.ttl / 2:  # its deletion is due soon: leave it to the sweep
            return None
        return chat_id if self.store.take_held(chat_id) else None

    def refill(self, identity: Identity, model: str, chat_type: str) -> None:
        """Make the next spare in the background, unless one is there or on its way.

        Called once a new chat's first turn is accepted, so the turn's own calls go
        first and an account the site refuses gets no chats made ahead. A caller's
        own account (client mode) is not ours to keep chats on.
        """
        if not self.enabled or identity.ephemeral:
            return
        key = (self._account_of(identity), model, chat_type)
        with self._lock:
            if self._closed or key in self._making or key in self._spares:
                return
            self._making.add(key)
        threading.Thread(target=self._make, args=(identity, key), name="spare chat", daemon=True).start()

    def _make(self, identity: Identity, key: SpareKey) -> None:
        made: str | None = None
        try:
            chat_id = self.client.create_chat(identity, key[1], key[2])
            self.store.hold(key[0], chat_id, self.ttl)
            made = chat_id
        except ProxyError as exc:  # the next turn makes its own chat, as without spares
            logger.debug("no spare chat for %s: %s", identity.label, exc.message)
        except Exception:  # the thread's boundary: a bug here must not go unseen, nor reach a request
            logger.exception("making a spare chat failed")
        with self._lock:
            self._making.discard(key)
            if made is not None:
                self._spares[key] = (made, self._clock())
            self._lock.notify_all()

    def close(self, wait: float = 5.0) -> list[tuple[str, str]]:
        """Stop making spares; the (account, chat id) of those left, for the caller to delete now.

        Spares still being made are waited for (``wait`` seconds at most), so none
        reaches the site after its app is gone; one later still is left to the sweep.
        """
        with self._lock:
            self._closed = True
            self._lock.wait_for(lambda: not self._making, wait)
            left, self._spares = self._spares, {}
        return [(key[0], chat_id) for key, (chat_id, _) in left.items()]

    def chat_ids(self) -> set[str]:
        with self._lock:
            return {chat_id for chat_id, _ in self._spares.values()}

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no spare is being made (tests, and anyone counting chats)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._making, timeout)
