"""Upstream chats: which one a request goes to, continuing them, and deleting the proxy's own.

The site keeps a conversation server-side (§10), so a request whose history
extends one this proxy already answered sends only its new messages into the
same chat, with ``parent_id`` set to the last ``response_id``. That keeps long
agent sessions small on the wire (far from the size captcha, §11) and cheap.

- ``ConversationStore`` maps a conversation (a hash chain over its messages,
  seeded with the model and the tool set) to the upstream chat that holds it:
  bounded, expiring, in the shared state store, so any worker continues it.
- ``ChatJanitor`` deletes chats the proxy no longer needs, in a background
  thread; chats are only ever deleted by id, so chats made in the browser are
  never touched.
- ``Conversations`` is the small interface ``routes`` use: ``start()`` a
  request's turn (continued or fresh, with a fallback to fresh when the chat is
  gone or on another account), ``complete()`` it, ``settle()`` it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from errors import ChatNotFound, ProxyError, UpstreamError
from identity_pool import MemoryStore
from qwen_client.spare_chats import SpareChats
from qwen_client.wire import TurnLimit, encode_body
from transform import media_parts, openai_chat, tool_prompts

if TYPE_CHECKING:
    from config import Settings
    from identity_pool import Identity, StateStore
    from qwen_client.client import AnswerStream, QwenClient
    from qwen_client.uploads import Uploader

logger = logging.getLogger("qwen2openai.conversations")

#: The document that carries context too long to send inline.
CONTEXT_FILE = "conversation.txt"
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
    normal = " ".join(_without_think(text).split())
    return hashlib.sha256(f"{key}\0{role}\0{normal}".encode()).hexdigest()


def _without_think(text: str) -> str:
    """``text`` less its ``<think>…</think>`` blocks, in one pass (a lazy regex rescans on each unclosed tag)."""
    if "<think>" not in text:
        return text
    kept, at = [], 0
    while (start := text.find("<think>", at)) >= 0:
        end = text.find("</think>", start + 7)
        if end < 0:
            break  # unclosed: kept as it is, like the regex did
        kept.append(text[at:start])
        at = end + 8
    kept.append(text[at:])
    return "".join(kept)


def as_history(chat: openai_chat.ChatRequest) -> tuple[tuple[str, str], ...]:
    """The messages as the next request will show them: this turn's media become placeholders there."""
    if not chat.media:
        return chat.messages
    newest = max(i for i, (role, _) in enumerate(chat.messages) if role == "user")
    role, text = chat.messages[newest]
    text = "\n".join(filter(None, [text, *(media_parts.placeholder(part) for part in chat.media)]))
    return chat.messages[:newest] + ((role, text),) + chat.messages[newest + 1:]


def conversation_seed(model: str, spec: tool_prompts.AgentSpec | None) -> str:
    """What must not change for a chat to be continued: the model and the tools described in it."""
    return f"{model}\0{spec.fingerprint() if spec is not None and spec.tools else ''}"


# --------------------------------------------------------------------------- store


@dataclasses.dataclass(frozen=True)
class Thread:
    """Where a conversation lives upstream: the chat, its account, and the response to answer next."""

    account: str
    chat_id: str
    response_id: str


class ConversationStore:
    """Conversation key → ``Thread``, in the shared state store: every worker continues every conversation.

    Several keys may point at one chat (each turn adds one; a client that
    regenerates an answer continues from an older key, which the site keeps as
    a branch). Each chat is in a due-time queue, due when its newest key
    expires; whichever worker takes it from the queue (the sweep, or the
    overflow past ``capacity`` chats) hands it to ``on_drop(account, chat_id)``
    so it is deleted once, cluster-wide.
    """

    QUEUE = "chats"
    SWEEP_EVERY = 5.0

    def __init__(
        self, state: StateStore, ttl: float, capacity: int, on_drop: Callable[[str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state, self.ttl, self.capacity, self._on_drop, self._clock = state, ttl, capacity, on_drop, clock
        self._swept = 0.0

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
        found = self.state.get("conv:" + keys[last])
        if not isinstance(found, list) or len(found) != 3:
            return None
        return last + 1, Thread(*found)

    def remember(self, key: str, account: str, chat_id: str, response_id: str) -> None:
        self.state.put("conv:" + key, [account, chat_id, response_id], ttl=self.ttl)
        self.state.put("chat:" + chat_id, account, ttl=2 * self.ttl)  # who deletes it, when it is due
        size = self.state.schedule(self.QUEUE, chat_id, self._clock() + self.ttl)
        if size > self.capacity:
            self._drop(self.state.take_oldest(self.QUEUE, size - self.capacity))

    def forget_chat(self, chat_id: str) -> None:
        """The chat is gone upstream: nothing to delete; keys that point at it fall back to a fresh chat."""
        self.state.unschedule(self.QUEUE, chat_id)
        self.state.delete("chat:" + chat_id)

    def hold(self, account: str, chat_id: str, ttl: float) -> None:
        """Put a chat made ahead of need (``SpareChats``) in the deletion queue, due in ``ttl`` seconds."""
        self.state.put("chat:" + chat_id, account, ttl=2 * ttl)
        self.state.schedule(self.QUEUE, chat_id, self._clock() + ttl)

    def take_held(self, chat_id: str) -> bool:
        """Take a held chat out of the deletion queue for a turn; ``False`` if a sweep has it already."""
        taken: list[object] = []

        def claim(account: object) -> None:
            taken.append(account)
            return None  # the key is deleted: the chat is this turn's now, no sweep's

        self.state.update("chat:" + chat_id, claim)
        self.state.unschedule(self.QUEUE, chat_id)
        return bool(taken) and isinstance(taken[-1], str)  # the last try counts (Redis may retry)

    def holds(self, chat_id: str) -> bool:
        return self.state.get("chat:" + chat_id) is not None

    def sweep(self, force: bool = False) -> None:
        """Hand chats whose conversations expired to ``on_drop`` (every few seconds at most per worker)."""
        now = self._clock()
        if not force and now - self._swept < self.SWEEP_EVERY:
            return
        self._swept = now
        self._drop(self.state.take_due(self.QUEUE, now))

    def _drop(self, chat_ids: list[str]) -> None:
        for chat_id in chat_ids:
            account = self.state.get("chat:" + chat_id)
            self.state.delete("chat:" + chat_id)
            if isinstance(account, str):
                self._on_drop(account, chat_id)


# --------------------------------------------------------------------------- janitor


#: Deletions leave one by one, spaced out: at most this many a second while few wait ...
DELETES_PER_SECOND = 4.0
#: ... and, when many wait (a sweep after a busy hour), fast enough to be done within this many seconds.
DELETE_SPREAD_SECONDS = 60.0


def delete_gap(waiting: int) -> float:
    """Seconds between two deletions while ``waiting`` more are queued: never a burst, never an endless backlog."""
    return min(1.0 / DELETES_PER_SECOND, DELETE_SPREAD_SECONDS / max(1, waiting))


class ChatJanitor:
    """Deletes upstream chats by id in a background thread, and sweeps expired conversations on a timer.

    ``start()`` (the app factory calls it) starts the thread, a greenlet under
    gevent like the pool's token refresher; it sweeps every ``interval`` seconds
    whether or not any traffic comes, so an idle conversation's chat is deleted
    about ``CHAT_TTL`` after its last turn, as the README promises. Deletions are
    paced by ``gap`` (``delete_gap``): they take no CPU from a burst of turns and
    show the site no burst of their own. ``close()`` sends what is still queued
    at once and stops. ``wait_idle`` lets callers (tests, shutdown) wait until
    every queued deletion is done.
    """

    def __init__(
        self, client: QwenClient, sweep: Callable[[], None], interval: float = 60.0,
        gap: Callable[[int], float] = delete_gap,
    ) -> None:
        self.client, self._sweep, self.interval, self._gap = client, sweep, interval, gap
        self._queue: queue.Queue[tuple[Any, str] | None] = queue.Queue()
        self._pending = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._hurry = threading.Event()  # set by close(): what is queued leaves without pauses
        self.deleted = 0

    def start(self) -> None:
        """Start the background thread (once; a closed janitor stays closed)."""
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="qwen2openai-janitor", daemon=True)
                self._thread.start()

    @property
    def running(self) -> bool:
        with self._cond:
            return self._thread is not None and self._thread.is_alive()

    def discard(self, identity: Any, chat_id: str) -> None:
        with self._cond:
            self._pending += 1
        self.start()
        self._queue.put((identity, chat_id))

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        with self._cond:
            thread, self._closed = self._thread, True
        self._hurry.set()
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=5)

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.interval
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_sweep - time.monotonic()))
            except queue.Empty:
                item = ()
            if item is None:
                return
            if time.monotonic() >= next_sweep:  # on time even while deletions keep the queue busy
                self._tick()
                next_sweep = time.monotonic() + self.interval
            if item:
                try:
                    self._delete(*item)
                except Exception:  # the loop must outlive any one bad deletion
                    logger.exception("deleting an upstream chat failed")
                self._hurry.wait(self._gap(self._queue.qsize()))

    def _tick(self) -> None:
        try:
            self._sweep()
        except Exception:  # the loop must outlive any one bad sweep
            logger.exception("sweeping expired conversations failed")

    def _delete(self, identity: Any, chat_id: str) -> None:
        try:
            self.client.delete_chat(identity, chat_id)
            self.deleted += 1
            logger.debug("deleted upstream chat %s of %s", chat_id, identity.label)
        except ProxyError as exc:
            logger.info("could not delete upstream chat %s: %s", chat_id, exc.message)
        finally:
            if identity.ephemeral:  # a caller's own account: its session was opened just for this
                identity.close()
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()


# --------------------------------------------------------------------------- one request's chat


class UpstreamChat:
    """One chat on the site, on one account: created (or continued) once, then posted into."""

    def __init__(
        self, client: QwenClient, identity: Identity, model: str, chat_type: str, config: Mapping[str, Any],
        chat_id: str | None = None,
    ) -> None:
        self.client, self.identity = client, identity
        self.model, self.chat_type, self.config = model, chat_type, dict(config)
        self.limit: TurnLimit = client.turn_limit
        self.chat_id = chat_id

    def create(self) -> str:
        """``chats/new`` (§4)."""
        self.chat_id = self.client.create_chat(self.identity, self.model, self.chat_type)
        return self.chat_id

    def _build(self, content: str, parent_id: str | None, files: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return openai_chat.completion_payload(
            model=self.model, chat_id=self.chat_id or str(uuid.UUID(int=0)), content=content,
            chat_type=self.chat_type, config=self.config, fid=str(uuid.uuid4()), timestamp=int(time.time()),
            parent_id=parent_id, files=files,
        )

    def body(self, content: str, files: Sequence[Mapping[str, Any]] = ()) -> bytes:
        """The turn's body as it would be sent, for the site's size rule, which counts its bytes (§11, §14)."""
        return encode_body(self._build(content, None, files))

    def payload(
        self, content: str, parent_id: str | None = None, files: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        """The turn's body; ``QwenClient`` refuses it before sending if it is over the size rule (§11, §14)."""
        return self._build(content, parent_id, files)

    def post(
        self, content: str, parent_id: str | None = None, files: Sequence[Mapping[str, Any]] = ()
    ) -> AnswerStream:
        """One turn into this chat; ``parent_id`` is the response it answers (§10)."""
        payload = self.payload(content, parent_id, files)
        return self.client.stream_completion(self.identity, self.chat_id or "", payload)

    def open(
        self, content: str, parent_id: str | None = None, files: Sequence[Mapping[str, Any]] = ()
    ) -> AnswerStream:
        """``post``, with the first events waited for: a refused turn raises here, before any output."""
        events = self.post(content, parent_id, files)
        try:
            events.peek()
        except BaseException:
            events.close()
            raise
        return events


def context_document(messages: Sequence[tuple[str, str]], max_messages: int, whole: bool) -> str:
    """The text of the uploaded ``conversation.txt``: what it is, then the messages in the turn's own tags."""
    scope = "up to and including its newest message" if whole else "before its newest message"
    return (f"This document holds a conversation between a user and you, the assistant, {scope}, oldest "
            "first, each message in a tag named after its role.\n\n"
            + openai_chat.flatten_messages(messages, max_messages))


def _newest_start(messages: Sequence[tuple[str, str]]) -> int:
    """Where the newest turn begins: after the last assistant message (else it is the last message)."""
    last = max((i for i, (role, _) in enumerate(messages) if role == "assistant"), default=-1)
    return last + 1 if last >= 0 else len(messages) - 1


def _can_attach_document(chat: openai_chat.ChatRequest) -> bool:
    """The site takes audio and video alone, and at most five documents per message (§7.4)."""
    kinds = [part.kind for part in chat.media]
    return not {"audio", "video"} & set(kinds) and kinds.count("document") < media_parts.MAX_COUNT["document"]


def _pointer(whole: bool) -> str:
    if whole:
        return (f"This conversation, up to and including its newest message, is in the attached document "
                f"{CONTEXT_FILE}. Read it, then reply to its newest message.")
    return (f"The system instructions and the earlier messages of this conversation are in the attached "
            f"document {CONTEXT_FILE}. Read it first, then reply to the newest message, which follows.")


def _no_events() -> Iterator[dict]:
    yield from ()


@dataclasses.dataclass
class Exchange:
    """One request's upstream side: its chat, the first turn's events, and the keys to remember it by."""

    upstream: UpstreamChat
    events: Iterator[dict]  # the turn's AnswerStream once open
    keys: list[str]
    continued: bool
    kept: bool = False

    @property
    def chat_id(self) -> str:
        return self.upstream.chat_id or ""

    def post(self, content: str, parent_id: str | None) -> AnswerStream:
        """A corrective turn into the same chat."""
        return self.upstream.post(content, parent_id)


class Conversations:
    """Where each request's turn goes upstream, and what happens to the chat afterwards."""

    def __init__(
        self, client: QwenClient, settings: Settings, uploader: Uploader | None = None,
        state: StateStore | None = None, accounts: Callable[[str], Identity | None] | None = None,
    ) -> None:
        """``state`` is the store shared by the workers (``create_app`` passes the pool's); ``accounts``
        finds a pooled account by its id, to delete a chat another worker started."""
        self.client, self.settings, self.uploader = client, settings, uploader
        self._accounts = accounts or (lambda account: None)
        #: Callers' own accounts (client mode) by account id: never stored, so only this worker deletes their chats.
        self._callers: dict[str, Identity] = {}
        self.store = ConversationStore(state if state is not None else MemoryStore(), settings.CHAT_TTL,
                                       settings.MAX_CONVERSATIONS, self._dropped)
        self.janitor = ChatJanitor(client, lambda: self.store.sweep(force=True), sweep_interval(settings.CHAT_TTL))
        self.spares = SpareChats(client, self.store, _account, enabled=settings.SPARE_CHATS and settings.DELETE_CHATS)

    def preferred(self, chat: openai_chat.ChatRequest, model: str) -> Callable[[Identity], bool] | None:
        """Which account to prefer for this request: the one holding the conversation it continues."""
        if not self.settings.CONTINUE_CHATS:
            return None
        keys = history_keys(as_history(chat), conversation_seed(model, chat.agent))
        found = self.store.find(keys, [role for role, _ in chat.messages])
        if found is None:
            return None
        account = found[1].account
        return lambda identity: _account(identity) == account

    def start(
        self, identity: Identity, chat: openai_chat.ChatRequest, model: str, chat_type: str,
        config: Mapping[str, Any], files: Sequence[Mapping[str, Any]] = (),
    ) -> Exchange:
        """Post the request's turn (with the uploads of its newest message): into the chat it continues
        if that chat is on ``identity``'s account, else into a new chat with the flattened history."""
        s = self.settings
        keys = history_keys(as_history(chat), conversation_seed(model, chat.agent))
        found = self.store.find(keys, [role for role, _ in chat.messages]) if s.CONTINUE_CHATS else None
        if found is not None and found[1].account == _account(identity):
            count, thread = found
            upstream = UpstreamChat(self.client, identity, model, chat_type, config, thread.chat_id)
            try:
                content, sent = self._fit(identity, chat, upstream, chat.messages[count:], 0, files, fresh=False)
                events = upstream.open(content, thread.response_id, sent)
                return Exchange(upstream, events, keys, continued=True)
            except UpstreamError as exc:
                if not isinstance(exc, ChatNotFound) and exc.code not in _STALE_CODES:
                    raise
                logger.info("chat %s cannot be continued (%s); starting a new one", thread.chat_id, exc.code)
                self.store.forget_chat(thread.chat_id)
        elif found is not None:
            logger.debug("conversation is on another account; starting a new chat")
        upstream = UpstreamChat(self.client, identity, model, chat_type, config)
        # Sized (and earlier context uploaded) before a chat is made for a turn the site would refuse.
        content, sent = self._fit(identity, chat, upstream, chat.messages, _newest_start(chat.messages), files, True)
        upstream.chat_id = self.spares.take(identity, model, chat_type)
        exchange = Exchange(upstream, _no_events(), keys, continued=False)
        try:
            exchange.events = self._open_new(upstream, content, sent)
        except ProxyError:
            self.settle(exchange)
            raise
        return exchange

    def _open_new(self, upstream: UpstreamChat, content: str, files: Sequence[Mapping[str, Any]]) -> AnswerStream:
        """The first turn of a new chat (a spare one if ``upstream`` has it, else one made now); then the next spare."""
        if upstream.chat_id is None:
            upstream.create()
            events = upstream.open(content, files=files)
        else:
            try:
                events = upstream.open(content, files=files)
            except ChatNotFound:  # the spare was deleted meanwhile (swept, or by hand in the web app)
                logger.info("spare chat %s is gone upstream; making a new one", upstream.chat_id)
                upstream.create()
                events = upstream.open(content, files=files)
        self.spares.refill(upstream.identity, upstream.model, upstream.chat_type)
        return events

    def _fit(
        self, identity: Identity, chat: openai_chat.ChatRequest, upstream: UpstreamChat,
        messages: Sequence[tuple[str, str]], split: int, files: Sequence[Mapping[str, Any]], fresh: bool,
    ) -> tuple[str, list[Mapping[str, Any]]]:
        """The turn's message and files, within ``MAX_TURN_BYTES`` (bytes of the body as sent).

        All inline if it fits; else the messages before ``split`` (system prompt
        and history) go into an uploaded ``conversation.txt`` and only the newest
        turn stays inline; else the whole turn goes into the document, with only
        the tool rules and a pointer inline (§7.3, §11, §14).
        """
        s = self.settings
        plans: list[tuple[Sequence[tuple[str, str]], Sequence[tuple[str, str]]]] = [(messages, ())]
        if s.OFFLOAD_CONTEXT and self.uploader is not None and _can_attach_document(chat):
            if 0 < split < len(messages):
                plans.append((messages[split:], messages[:split]))
            plans.append(((), messages))
        bodies: list[bytes] = []
        for inline, offloaded in plans:
            text = openai_chat.flatten_messages(inline, s.MAX_HISTORY_MESSAGES) if inline else ""
            if offloaded:
                text = "\n\n".join(filter(None, [_pointer(whole=not inline), text]))
            content = tool_prompts.compose_turn(chat.agent, text, fresh)
            bodies.append(upstream.body(content, files))
            if not upstream.limit.fits(bodies[-1]):
                continue
            if not offloaded:
                return content, list(files)
            document = context_document(offloaded, s.MAX_HISTORY_MESSAGES, whole=not inline)
            entry = self.uploader.upload(identity, document.encode(), filename=CONTEXT_FILE,
                                         content_type="text/plain", kind="document")
            logger.info("%s: turn of %d bytes above MAX_TURN_BYTES; %d message(s) sent as %s", identity.label,
                        len(bodies[0]), len(offloaded), CONTEXT_FILE)
            return content, [*files, entry]
        smallest = min(len(body) for body in bodies)
        tried = f" ({smallest:,} bytes even with the conversation in an attached document)" if len(bodies) > 1 else ""
        raise upstream.limit.refusal(bodies[0], tried)

    def complete(self, exchange: Exchange, translator: Any) -> None:
        """The turn ended well: remember the conversation, answer included, for the next request."""
        response_id = translator.response_id
        if not (self.settings.CONTINUE_CHATS and response_id):
            return
        message = translator.completion()["choices"][0]["message"]
        answer = tool_prompts.fold_assistant(message.get("content"), message.get("tool_calls"))
        key = next_key(exchange.keys[-1], "assistant", answer)
        identity = exchange.upstream.identity
        if identity.ephemeral:
            self._callers[_account(identity)] = identity
            while len(self._callers) > self.settings.MAX_CONVERSATIONS:
                del self._callers[next(iter(self._callers))]
        self.store.remember(key, _account(identity), exchange.chat_id, response_id)
        exchange.kept = True

    def settle(self, exchange: Exchange) -> None:
        """The turn is over (well or not): a new chat nobody will continue is deleted now."""
        if exchange.continued or exchange.kept or not exchange.upstream.chat_id:
            return
        if not self.store.holds(exchange.chat_id) and self.settings.DELETE_CHATS:
            self.janitor.discard(exchange.upstream.identity, exchange.chat_id)

    def _dropped(self, account: str, chat_id: str) -> None:
        identity = self._callers.get(account) or self._accounts(account)
        if identity is None:
            logger.debug("chat %s: its account %s is not this worker's; left to the site", chat_id, account)
            return
        if self.settings.DELETE_CHATS:
            self.janitor.discard(identity, chat_id)

    def start_janitor(self) -> None:
        """Start deleting idle conversations' chats on a timer (the app factory calls this once)."""
        self.janitor.start()

    def close(self) -> None:
        """Delete the spare chats, then send every queued deletion and stop."""
        for account, chat_id in self.spares.close():
            identity = self._accounts(account)
            if identity is not None and self.store.take_held(chat_id):
                self.janitor.discard(identity, chat_id)
        self.janitor.close()


def sweep_interval(ttl: float) -> float:
    """How often idle conversations are looked for: a tenth of ``CHAT_TTL``, at most a minute."""
    return min(60.0, max(0.05, ttl / 10))


def _account(identity: Identity) -> str:
    return identity.account_id or identity.label
