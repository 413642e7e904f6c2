"""Upstream chats: which one a request goes to, continuing them, and deleting the proxy's own.

The site keeps a conversation server-side (§10), so a request whose history
extends one this proxy already answered sends only its new messages into the
same chat, with ``parent_id`` set to the last ``response_id``. That keeps long
agent sessions small on the wire (far from the size captcha, §11) and cheap.

- ``ConversationStore`` maps a conversation (a hash chain over its messages,
  seeded with the model and the tool set) to the upstream chat that holds it:
  bounded, expiring, behind one lock.
- ``ChatJanitor`` deletes chats the proxy no longer needs, in a background
  thread; chats are only ever deleted by id, so chats made in the browser are
  never touched.
- ``Conversations`` is the small interface ``app.py`` uses: ``start()`` a
  request's turn (continued or fresh, with a fallback to fresh when the chat is
  gone or on another account), ``complete()`` it, ``settle()`` it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import agents
import media
import transform
from errors import ChatNotFound, InvalidRequest, ProxyError, UpstreamError

if TYPE_CHECKING:
    from config import Settings
    from identity_pool import Identity
    from qwen_client import QwenClient

logger = logging.getLogger("qwen2openai.conversations")

_THINK = re.compile(r"<think>.*?</think>", re.S)
#: A continuation attempt that fails with one of these falls back to a fresh chat.
_STALE_CODES = frozenset({"upstream_http_404", "upstream_bad_request"})


# --------------------------------------------------------------------------- keys


def history_keys(messages: Sequence[tuple[str, str]], seed: str) -> list[str]:
    """``keys[i]`` identifies ``messages[: i + 1]`` (under ``seed``): a hash chain over normalised text."""
    keys, key = [], hashlib.sha256(seed.encode()).hexdigest()
    for role, text in messages:
        key = next_key(key, role, text)
        keys.append(key)
    return keys


def next_key(key: str, role: str, text: str) -> str:
    # Whitespace and echoed <think> blocks differ between clients' copies of the same reply.
    normal = " ".join(_THINK.sub("", text).split())
    return hashlib.sha256(f"{key}\0{role}\0{normal}".encode()).hexdigest()


def as_history(chat: transform.ChatRequest) -> tuple[tuple[str, str], ...]:
    """The messages as the next request will show them: this turn's media become placeholders there."""
    if not chat.media:
        return chat.messages
    newest = max(i for i, (role, _) in enumerate(chat.messages) if role == "user")
    role, text = chat.messages[newest]
    text = "\n".join(filter(None, [text, *(media.placeholder(part) for part in chat.media)]))
    return chat.messages[:newest] + ((role, text),) + chat.messages[newest + 1:]


def conversation_seed(model: str, spec: agents.AgentSpec | None) -> str:
    """What must not change for a chat to be continued: the model and the tools described in it."""
    return f"{model}\0{spec.fingerprint() if spec is not None and spec.tools else ''}"


# --------------------------------------------------------------------------- store


@dataclasses.dataclass(frozen=True)
class Thread:
    """Where a conversation lives upstream: the chat, its account, and the response to answer next."""

    account: str
    chat_id: str
    response_id: str
    identity: Any  # the account's Identity, to delete the chat with later
    expires: float


class ConversationStore:
    """Conversation key → ``Thread``; bounded, expiring, thread-safe.

    Several keys may point at one chat (each turn adds one; a client that
    regenerates an answer continues from an older key, which the site keeps as
    a branch). When the last key of a chat expires or is evicted, ``on_drop``
    gets its thread so the chat can be deleted.
    """

    def __init__(
        self, ttl: float, capacity: int, on_drop: Callable[[Thread], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.capacity, self._on_drop, self._clock = ttl, capacity, on_drop, clock
        self._entries: collections.OrderedDict[str, Thread] = collections.OrderedDict()  # oldest first
        self._refs: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def find(self, keys: Sequence[str], roles: Sequence[str]) -> tuple[int, Thread] | None:
        """The stored conversation a request extends: (messages it covers, thread), or ``None``.

        It must end at the request's last assistant message and be followed only
        by new user or tool messages (the upstream chat cannot take a system
        prompt or an assistant message the model did not write).
        """
        last = max((i for i, role in enumerate(roles) if role == "assistant"), default=-1)
        if last < 0 or last == len(roles) - 1 or any(r in ("system", "assistant") for r in roles[last + 1:]):
            return None
        self.sweep()
        with self._lock:
            thread = self._entries.get(keys[last])
        return (last + 1, thread) if thread is not None else None

    def remember(self, key: str, account: str, chat_id: str, response_id: str, identity: Any) -> None:
        thread = Thread(account, chat_id, response_id, identity, self._clock() + self.ttl)
        dropped = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                dropped += self._unref(old)
            self._entries[key] = thread
            self._refs[chat_id] += 1
            while len(self._entries) > self.capacity:
                dropped += self._unref(self._entries.popitem(last=False)[1])
        self._drop(dropped)

    def forget_chat(self, chat_id: str) -> None:
        """The chat is gone upstream: drop every key that points at it (nothing to delete)."""
        with self._lock:
            for key in [k for k, t in self._entries.items() if t.chat_id == chat_id]:
                del self._entries[key]
            self._refs.pop(chat_id, None)

    def holds(self, chat_id: str) -> bool:
        with self._lock:
            return self._refs[chat_id] > 0

    def sweep(self) -> None:
        """Forget expired conversations (entries are in expiry order, the TTL being one)."""
        now, dropped = self._clock(), []
        with self._lock:
            while self._entries:
                key, thread = next(iter(self._entries.items()))
                if thread.expires > now:
                    break
                del self._entries[key]
                dropped += self._unref(thread)
        self._drop(dropped)

    def _unref(self, thread: Thread) -> list[Thread]:
        self._refs[thread.chat_id] -= 1
        if self._refs[thread.chat_id] > 0:
            return []
        del self._refs[thread.chat_id]
        return [thread]

    def _drop(self, threads: list[Thread]) -> None:
        for thread in threads:
            self._on_drop(thread)


# --------------------------------------------------------------------------- janitor


class ChatJanitor:
    """Deletes upstream chats by id in a background thread, and sweeps the store while idle.

    The thread starts with the first chat to delete (none at import or for an
    idle app) and runs as a greenlet under gevent. ``wait_idle`` lets callers
    (tests, shutdown) wait until every queued deletion is done.
    """

    def __init__(self, client: QwenClient, sweep: Callable[[], None], interval: float = 60.0) -> None:
        self.client, self._sweep, self.interval = client, sweep, interval
        self._queue: queue.Queue[tuple[Any, str] | None] = queue.Queue()
        self._pending = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.deleted = 0

    def discard(self, identity: Any, chat_id: str) -> None:
        with self._cond:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="qwen2openai-janitor", daemon=True)
                self._thread.start()
        self._queue.put((identity, chat_id))

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        with self._cond:
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.interval)
            except queue.Empty:
                self._sweep()
                continue
            if item is None:
                return
            identity, chat_id = item
            try:
                self.client.delete_chat(identity, chat_id)
                self.deleted += 1
                logger.debug("deleted upstream chat %s of %s", chat_id, identity.label)
            except ProxyError as exc:
                logger.info("could not delete upstream chat %s: %s", chat_id, exc.message)
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()


# --------------------------------------------------------------------------- one request's chat


class UpstreamChat:
    """One chat on the site, on one account: created (or continued) once, then posted into."""

    def __init__(
        self, client: QwenClient, identity: Identity, model: str, chat_type: str, config: Mapping[str, Any],
        max_chars: int, chat_id: str | None = None,
    ) -> None:
        self.client, self.identity = client, identity
        self.model, self.chat_type, self.config = model, chat_type, dict(config)
        self.max_chars, self.chat_id = max_chars, chat_id

    def create(self) -> str:
        """``chats/new`` (§4)."""
        self.chat_id = self.client.create_chat(self.identity, self.model, self.chat_type)
        return self.chat_id

    def payload(
        self, content: str, parent_id: str | None = None, files: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        """The turn's body, refused before sending when the site would answer it with a captcha (§11)."""
        payload = transform.completion_payload(
            model=self.model, chat_id=self.chat_id or str(uuid.UUID(int=0)), content=content,
            chat_type=self.chat_type, config=self.config, fid=str(uuid.uuid4()), timestamp=int(time.time()),
            parent_id=parent_id, files=files,
        )
        size = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
        if size > self.max_chars:
            raise InvalidRequest(
                f"This conversation is too long for the Qwen site: the turn would be {size:,} characters, above "
                f"MAX_TURN_CHARS ({self.max_chars:,}); the site answers larger requests with a captcha. "
                "Shorten or summarise the history, or start a new conversation.",
                param="messages", code="context_length_exceeded",
            )
        return payload

    def post(
        self, content: str, parent_id: str | None = None, files: Sequence[Mapping[str, Any]] = ()
    ) -> Iterator[dict]:
        """One turn into this chat; ``parent_id`` is the response it answers (§10)."""
        payload = self.payload(content, parent_id, files)
        return self.client.stream_completion(self.identity, self.chat_id or "", payload)

    def open(
        self, content: str, parent_id: str | None = None, files: Sequence[Mapping[str, Any]] = ()
    ) -> Iterator[dict]:
        """``post``, with the first event already read: a refused turn raises here, before any output."""
        events = self.post(content, parent_id, files)
        try:
            first = next(events)
        except StopIteration:
            return _resume(None, events)
        return _resume(first, events)


def _no_events() -> Iterator[dict]:
    yield from ()


def _resume(first: dict | None, rest: Iterator[dict]) -> Iterator[dict]:
    """The stream with its first event put back (a generator, so it can be closed)."""
    try:
        if first is not None:
            yield first
        yield from rest
    finally:
        rest.close()


@dataclasses.dataclass
class Exchange:
    """One request's upstream side: its chat, the first turn's events, and the keys to remember it by."""

    upstream: UpstreamChat
    events: Iterator[dict]
    messages: tuple[tuple[str, str], ...]
    keys: list[str]
    continued: bool
    kept: bool = False

    @property
    def chat_id(self) -> str:
        return self.upstream.chat_id or ""

    def post(self, content: str, parent_id: str | None) -> Iterator[dict]:
        """A corrective turn into the same chat."""
        return self.upstream.post(content, parent_id)


class Conversations:
    """Where each request's turn goes upstream, and what happens to the chat afterwards."""

    def __init__(self, client: QwenClient, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self.store = ConversationStore(settings.CHAT_TTL, settings.MAX_CONVERSATIONS, self._dropped)
        self.janitor = ChatJanitor(client, self.store.sweep)

    def start(
        self, identity: Identity, chat: transform.ChatRequest, model: str, chat_type: str,
        config: Mapping[str, Any], files: Sequence[Mapping[str, Any]] = (),
    ) -> Exchange:
        """Post the request's turn (with the uploads of its newest message): into the chat it continues
        if that chat is on ``identity``'s account, else into a new chat with the flattened history."""
        s = self.settings
        keys = history_keys(as_history(chat), conversation_seed(model, chat.agent))
        found = self.store.find(keys, [role for role, _ in chat.messages]) if s.CONTINUE_CHATS else None
        if found is not None and found[1].account == _account(identity):
            count, thread = found
            upstream = UpstreamChat(self.client, identity, model, chat_type, config, s.MAX_TURN_CHARS, thread.chat_id)
            text = transform.flatten_messages(chat.messages[count:], s.MAX_HISTORY_MESSAGES)
            try:
                events = upstream.open(agents.compose_turn(chat.agent, text, fresh=False), thread.response_id, files)
                return Exchange(upstream, events, chat.messages, keys, continued=True)
            except UpstreamError as exc:
                if not isinstance(exc, ChatNotFound) and exc.code not in _STALE_CODES:
                    raise
                logger.info("chat %s cannot be continued (%s); starting a new one", thread.chat_id, exc.code)
                self.store.forget_chat(thread.chat_id)
        elif found is not None:
            logger.debug("conversation is on another account; starting a new chat")
        upstream = UpstreamChat(self.client, identity, model, chat_type, config, s.MAX_TURN_CHARS)
        text = agents.compose_turn(chat.agent, transform.flatten_messages(chat.messages, s.MAX_HISTORY_MESSAGES), True)
        upstream.payload(text, files=files)  # a turn too large for the site is refused before a chat is made
        upstream.create()
        exchange = Exchange(upstream, _no_events(), chat.messages, keys, continued=False)
        try:
            exchange.events = upstream.open(text, files=files)
        except ProxyError:
            self.settle(exchange)
            raise
        return exchange

    def complete(self, exchange: Exchange, translator: Any) -> None:
        """The turn ended well: remember the conversation, answer included, for the next request."""
        response_id = translator.response_id
        if not (self.settings.CONTINUE_CHATS and response_id):
            return
        message = translator.completion()["choices"][0]["message"]
        answer = agents.fold_assistant(message.get("content"), message.get("tool_calls"))
        key = next_key(exchange.keys[-1], "assistant", answer)
        identity = exchange.upstream.identity
        self.store.remember(key, _account(identity), exchange.chat_id, response_id, identity)
        exchange.kept = True

    def settle(self, exchange: Exchange) -> None:
        """The turn is over (well or not): a new chat nobody will continue is deleted now."""
        if exchange.continued or exchange.kept or not exchange.upstream.chat_id:
            return
        if not self.store.holds(exchange.chat_id) and self.settings.DELETE_CHATS:
            self.janitor.discard(exchange.upstream.identity, exchange.chat_id)

    def _dropped(self, thread: Thread) -> None:
        if self.settings.DELETE_CHATS:
            self.janitor.discard(thread.identity, thread.chat_id)

    def close(self) -> None:
        self.janitor.close()


def _account(identity: Identity) -> str:
    return identity.account_id or identity.label
