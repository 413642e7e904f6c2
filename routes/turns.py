"""One turn's life: the account it runs on, its upstream answer, and the SSE the client reads.

``open_turn`` picks the account (the pool's, with failover before any output,
or the caller's own), uploads the newest message's media, starts the
upstream chat through ``qwen_client.conversations`` and reads up to the first output so
that failures before it keep a real HTTP status. ``Turn`` relays the rest;
``sse`` encodes it with keep-alive pings and ends every stream with
``[DONE]``, an error event first when it failed after the first byte.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson

from errors import EmptyResponse, ProxyError, Unauthorized, UpstreamAuthError, UpstreamError
from identity_pool import Identity
from qwen_client import AnswerStream
from routes import hangup
from routes.metrics import track_turn
from transform import media_parts, openai_chat, tool_replies
from transform.answer import StreamTranslator

if TYPE_CHECKING:
    from routes.gateway import Gateway

logger = logging.getLogger("qwen2openai")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PING = b": ping\n\n"


class ClientGone(ProxyError):
    """The client closed its connection before the answer was complete: nobody to answer, nobody to blame."""

    status = 499  # nginx's "client closed request"
    type = "invalid_request_error"
    code = "client_closed_request"


class Turn:
    """One upstream turn: the site's answer stream, its translator, and the account to give back.

    With tools or a JSON ``response_format`` the answer is judged when it is
    complete; one corrective turn may follow in the same upstream chat
    (``follow_up(prompt, parent_id)`` posts it) before the client sees a call.
    Answers are read through an :class:`AnswerStream`, so reading can wait with a
    timeout: while the site is silent, keep-alives can go out (see ``batches``).
    """

    def __init__(
        self, events: Iterator[dict], translator: Any, label: str,
        follow_up: Callable[[str, str | None], Iterator[dict]] | None = None,
        on_complete: Callable[[Any], None] | None = None,
        on_end: Callable[[], None] | None = None,
        gone: hangup.GoneCheck | None = None,
    ) -> None:
        self._events, self.translator, self.label = _answer_stream(events, label), translator, label
        #: Whether the client hung up, looked at while the site is silent (the request's own socket by default).
        self._gone = gone or hangup.watch_current_request()
        #: A corrective turn into the same chat; the answer done well; the turn over (well or not).
        self._follow_up, self._on_complete, self._on_end = follow_up, on_complete, on_end
        #: Called once with the outcome when the turn ends: gives the account back.
        self.on_close: Callable[[Exception | None], None] = lambda error: None
        #: The account's own proxy, for downloads of what this turn generated (its CDN links).
        self.proxies: dict[str, str] | None = None
        self._pending: list[dict] = []
        self._heartbeat: float | None = None  # seconds without a chunk that make a keep-alive; None = wait
        self._waiting = False  # prime() gave up waiting: the stream starts before any output
        self._batches = self._read()
        self._closed = False
        self._started = time.monotonic()

    def prime(self, wait: float | None = None) -> None:
        """Read until the first output, so failures before it still get a real HTTP status.

        ``wait`` bounds this for streams: after that many seconds without output the
        stream starts anyway (200, then keep-alive pings), and a later failure becomes
        an error event instead. On failure the turn is closed (upstream response
        included) and the error raised.
        """
        self._heartbeat = wait
        try:
            for batch in self._batches:
                if batch is None:
                    self._waiting = True
                    return
                if batch:
                    self._pending = batch
                    return
        except BaseException as exc:
            self.close(exc if isinstance(exc, Exception) else None)
            raise

    def batches(self, heartbeat: float | None = None) -> Iterator[list[dict]]:
        """OpenAI chunks for the whole answer, closing ones included, grouped as they arrive.

        With ``heartbeat``, an empty list comes whenever that many seconds pass without
        a chunk (the caller sends a keep-alive), and first of all if ``prime`` gave up.
        """
        self._heartbeat = heartbeat
        if self._pending or self._waiting:
            yield self._pending
            self._pending = []
        for batch in self._batches:
            if batch is None:
                yield []
            elif batch:
                yield batch

    def chunks(self) -> Iterator[dict]:
        """OpenAI chunks for the whole answer, the closing ones included."""
        for batch in self.batches():
            yield from batch

    def _read(self) -> Iterator[list[dict] | None]:
        """Batches of chunks from the upstream answer (and its corrective turn), then the closing ones.

        ``None`` stands for ``heartbeat`` seconds without a chunk.
        """
        agent = self.translator if isinstance(self.translator, tool_replies.AgentTranslator) else None
        while True:
            yield from self._answer()
            self._check_answer()
            if agent is None:
                break
            yield agent.conclude(can_retry=self._follow_up is not None)
            if agent.retry_prompt is None:
                break
            logger.info("turn %s: answer broke the %s contract; one corrective turn", self.label,
                        "tool" if agent.spec.calls_tools else "JSON")
            self._events.close()
            self._events = _answer_stream(self._follow_up(agent.retry_prompt, agent.response_id), self.label)
            agent.retry()
        yield self.translator.finish()
        if self._on_complete is not None:
            self._on_complete(self.translator)

    def _answer(self) -> Iterator[list[dict] | None]:
        """Chunks of the current upstream answer, the events that arrived together in one batch."""
        feed, deadline, look = self.translator.feed, self._deadline(), self._next_look()
        while not self.translator.finished:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if look is not None:  # a silent site writes nothing that would show a hang-up: look at the client
                until_look = max(0.0, look - time.monotonic())
                wait = until_look if wait is None else min(wait, until_look)
            events = self._events.get(wait)
            if events == []:  # the end; None is a wait that timed out
                return
            chunks: list[dict] = []
            for event in events or ():
                chunks += feed(event)
                if self.translator.finished:
                    break
            if chunks:
                yield chunks  # a write: it tells whether the client is still there
                deadline, look = self._deadline(), self._next_look()
                continue
            if look is not None and time.monotonic() >= look:
                if self._gone is not None and self._gone():
                    raise ClientGone("The client closed the connection before the answer was complete.")
                look = self._next_look()
            if deadline is not None and time.monotonic() >= deadline:
                yield None
                deadline = self._deadline()

    def _next_look(self) -> float | None:
        return None if self._gone is None else time.monotonic() + hangup.CHECK_SECONDS

    def _deadline(self) -> float | None:
        return None if self._heartbeat is None else time.monotonic() + self._heartbeat

    def _check_answer(self) -> None:
        if not self.translator.has_output:
            raise EmptyResponse(
                "The Qwen site accepted the turn but sent no answer (often throttling of the account). Retry."
            )
        if not self.translator.has_answer:
            raise EmptyResponse("The Qwen site ended the turn without an answer (only thinking, or nothing). Retry.")

    def collect(self) -> dict[str, Any]:
        for _ in self.batches():
            pass
        return self.translator.completion()

    @contextlib.contextmanager
    def closing(self) -> Iterator[Turn]:
        """Close the turn when the block ends, telling ``close`` which error ended it (none: it went well)."""
        error: Exception | None = None
        try:
            yield self
        except Exception as exc:
            error = exc
            raise
        finally:
            self.close(error)

    def close(self, error: Exception | None = None) -> None:
        if not self._closed:
            self._closed = True
            self._batches.close()
            self._events.close()
            if self._on_end is not None:
                self._on_end()
            self.on_close(error)
            outcome = type(error).__name__ if error else "ok"
            logger.info("turn %s: %s in %.0f ms", self.label, outcome, (time.monotonic() - self._started) * 1000)


def _answer_stream(events: Iterator[dict], label: str) -> AnswerStream:
    """The site's own answer streams as they are; any other source of events (image turns) behind one."""
    return events if isinstance(events, AnswerStream) else AnswerStream(events=events, label=label)


def open_turn(gw: Gateway, chat: openai_chat.ChatRequest, choice: openai_chat.ModelChoice, identity: Identity | None) -> Turn:
    """Start the turn on the caller's own account, or on the pool's with failover before output."""
    if identity is not None:  # client mode: the caller's credentials, no pool and no retries
        try:
            turn = start_turn(gw, chat, choice, identity)
        except ProxyError as exc:
            identity.close()
            raise for_caller(exc, True) from None
        turn.on_close = lambda error: identity.close()
        track_turn(gw.metrics, turn, identity, choice.upstream.id, chat.stream)
        return turn
    prefer = gw.conversations.preferred(chat, choice.upstream.id)
    account, turn = gw.pool.run(lambda ident: start_turn(gw, chat, choice, ident), prefer)
    turn.on_close = lambda error: gw.pool.release(account, error)
    track_turn(gw.metrics, turn, account, choice.upstream.id, chat.stream)
    return turn


def start_turn(gw: Gateway, chat: openai_chat.ChatRequest, choice: openai_chat.ModelChoice, identity: Identity) -> Turn:
    """Create the upstream chat, post the turn and read up to its first output.

    On failure the upstream response is closed and the error raised; giving
    the account back is the caller's job.
    """
    chat_type = "search" if (choice.search or chat.search) else "t2t"
    model = choice.upstream.id
    config = openai_chat.feature_config(openai_chat.resolve_thinking(choice, chat), chat_type == "search", chat.thinking_budget)
    files = upload_media(gw, identity, chat.media)
    # The upstream side (continue a chat or create one, clean it up later) lives in qwen_client/conversations.py.
    exchange = gw.conversations.start(identity, chat, model, chat_type, config, files)
    label = f"{identity.label} {model} chat={exchange.chat_id}{' (continued)' if exchange.continued else ''}"
    turn = Turn(exchange.events, _translator(chat), label, follow_up=exchange.post,
                on_complete=lambda done: gw.conversations.complete(exchange, done),
                on_end=lambda: gw.conversations.settle(exchange))
    turn.prime(gw.settings.PING_INTERVAL_SECONDS if chat.stream else None)
    return turn


def _translator(chat: openai_chat.ChatRequest) -> Any:
    """The chunk translator of one completion; tools and JSON output wrap the plain one."""
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def plain() -> StreamTranslator:
        return StreamTranslator(completion_id, chat.model, created, chat.include_usage, chat.max_tokens)

    return tool_replies.translator_for(chat.agent, plain, lambda: f"call_{uuid.uuid4().hex[:24]}")


def upload_media(gw: Gateway, identity: Identity, parts: Sequence[media_parts.MediaPart]) -> list[dict[str, Any]]:
    """The turn's media as ``files[]`` entries, uploaded with the turn's own account (files belong to it, §7.4).

    Several files go up at once: each is two round trips to the site and one transfer to its storage.
    """
    def upload(part: media_parts.MediaPart) -> dict[str, Any]:
        return gw.uploader.upload(identity, part.data or b"", filename=part.filename, content_type=part.mime,
                                  kind=part.kind)

    if len(parts) < 2:
        return [upload(part) for part in parts]
    with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="upload") as workers:
        return list(workers.map(upload, parts))


def fetch_media(gw: Gateway, chat: openai_chat.ChatRequest) -> openai_chat.ChatRequest:
    """Download the turn's image and video URLs (guarded, bounded) before an account is taken for the turn."""
    if not any(part.remote for part in chat.media):
        return chat
    parts = []
    for part in chat.media:
        if part.remote:
            limit = min(media_parts.MAX_BYTES[part.kind], media_parts.MAX_FETCH_BYTES)
            got = gw.fetcher.fetch(part.source, expect=part.kind, max_bytes=limit, param=part.param)
            part = media_parts.with_bytes(part, got.data, got.content_type)
        parts.append(part)
    return dataclasses.replace(chat, media=tuple(parts))


def vision_model(
    gw: Gateway, chat: openai_chat.ChatRequest, choice: openai_chat.ModelChoice, models: list[openai_chat.ModelInfo]
) -> tuple[openai_chat.ModelChoice, dict[str, str]]:
    """The model for a turn with images, and the header that says when it is not the one asked for."""
    if not any(part.kind == "image" for part in chat.media):
        return choice, {}
    fallback = openai_chat.vision_fallback(choice, models, gw.settings.VISION_FALLBACK_MODEL)
    if fallback is None:
        return choice, {}
    logger.info("%s cannot see images; using %s", choice.upstream.id, fallback.upstream.id)
    return fallback, {"X-Model-Fallback": fallback.upstream.id}


def for_caller(exc: ProxyError, own_credentials: bool) -> ProxyError:
    """In client mode a refused token is the caller's own credential problem: 401, not 502."""
    if own_credentials and isinstance(exc, UpstreamAuthError):
        return Unauthorized(exc.message, code="upstream_unauthorized")
    return exc


def sse(turn: Turn, heartbeat: float | None = None) -> Iterator[bytes]:
    """Encode a turn as SSE; a failure after the first byte becomes an error event, then ``[DONE]``.

    Chunks that arrived together leave in one write; ``heartbeat`` seconds without
    any send a ``: ping`` comment, so neither nginx nor the client times out.
    """
    error: Exception | None = None
    try:
        for chunks in turn.batches(heartbeat):
            yield b"".join([encode_event(chunk) for chunk in chunks]) if chunks else PING
    except ClientGone as exc:  # nobody is reading: no error event, no [DONE]
        error = exc
        logger.info("turn %s: the client hung up while the site was silent", turn.label)
        return
    except ProxyError as exc:
        error = exc
        logger.warning("stream ended by upstream failure: %s", exc.message)
        yield encode_event(exc.to_dict())
    except Exception as exc:  # the boundary: nothing may escape after headers are sent
        error = exc
        logger.exception("stream failed")
        yield encode_event(UpstreamError("Internal error in the proxy while streaming.").to_dict())
    finally:
        turn.close(error)
    yield b"data: [DONE]\n\n"


def encode_event(obj: dict[str, Any]) -> bytes:
    """One SSE event: compact JSON, UTF-8 as is (orjson: the relay's hot path)."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"
