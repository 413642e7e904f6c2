"""Generated media: images, image edits and videos, as endpoints and as chat model suffixes (§8).

A blueprint that ``app.create_app`` registers. It reuses the app's caller
check, turn machinery, SSE encoding and upload path; what differs for
generation lives here: image turns (one upstream turn per picture), input
pictures (the site's own by reference, others uploaded with the turn's
account), video tasks (submit, then poll the site), and downloads of the
results from the site's CDN.

Videos: ``POST /v1/videos`` answers at once with an OpenAI ``Video`` whose id
the client polls at ``GET /v1/videos/<id>``; the id carries the task and its
account, so any worker can answer. A ``-video`` chat stream waits for the
video itself, with ``: ping`` comments between polls; a non-stream chat waits
up to ``VIDEO_SYNC_WAIT`` and otherwise answers with the id to poll.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState
from werkzeug.datastructures import FileStorage

from errors import InvalidRequest, NotFound, ProxyError, UpstreamAuthError, UpstreamError, UpstreamTimeout, echo
from identity_pool import Identity, new_session
from qwen_client import CdnFetcher, GenerationClient
from routes.gateway import Gateway, authenticate, json_body, site_models
from routes.metrics import track_turn
from routes.turns import PING, SSE_HEADERS, Turn, encode_event, for_caller, sse, upload_media
from routes.usage import note as note_usage
from transform import generation, media_parts, openai_chat

logger = logging.getLogger("qwen2openai")
bp = Blueprint("generation", __name__)
T = TypeVar("T")

#: Peers read a chat back 5 times for an image the stream did not name (§8.1).
READBACK_TRIES = 5
#: The site's feature quotas (§11): spending one pauses only that feature on the account.
IMAGE_QUOTA, VIDEO_QUOTA = "images", "videos"
#: Fetches of a generated file while the CDN still answers "not found" (§8.1).
DOWNLOAD_TRIES = 5
#: Consecutive failed status polls tolerated before a video wait gives up.
MAX_POLL_FAILURES = 3
#: Input pictures of one edit: the site's per-message image limit (§7.6), which also spares the
#: account's upload grants (~20 per window, §7.1); the site itself takes up to 20 (§8.2).
MAX_INPUT_IMAGES = media_parts.MAX_COUNT["image"]

#: A picture to give the site: a ``files[]`` entry by reference (one it made) or a part to upload.
InputImage = dict[str, Any] | media_parts.MediaPart


@dataclasses.dataclass
class Studio:
    """What generation needs per app, also after the request is over (video streams run on)."""

    gw: Gateway
    calls: GenerationClient
    cdn: CdnFetcher

    @property
    def max_download(self) -> int:
        return int(self.gw.settings.MEDIA_MAX_MB * 1024 * 1024)


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    """One studio per app; downloads only from the site's CDN hosts and QWEN_BASE_URL's."""
    gw = state.app.extensions["qwen2openai"]
    hosts = (*gw.settings.MEDIA_HOSTS, urlsplit(gw.settings.QWEN_BASE_URL).hostname or "")
    cdn = CdnFetcher(hosts, gw.settings.CONNECT_TIMEOUT, new_session(16))
    state.app.extensions["qwen2openai.generation"] = Studio(gw, GenerationClient(gw.client), cdn)


def studio() -> Studio:
    return current_app.extensions["qwen2openai.generation"]


@contextlib.contextmanager
def caller_account() -> Iterator[Identity | None]:
    """``authenticate()``, closing the session of a client-mode caller's own account afterwards."""
    caller = authenticate()
    try:
        yield caller
    finally:
        if caller is not None:
            caller.close()


# --------------------------------------------------------------------------- images


@bp.post("/v1/images/generations")
@bp.post("/images/generations")
def images_generations() -> Response:
    identity = authenticate()
    req = generation.parse_image_request(json_body(), "t2i")
    return jsonify(generate_images(studio(), req, "t2i", [], identity))


@bp.post("/v1/images/edits")
@bp.post("/images/edits")
def images_edits() -> Response:
    identity = authenticate()
    fields, uploads = _fields()
    req = generation.parse_image_request(fields, "image_edit")
    values: list[Any] = [f for name in ("image", "image[]") for f in uploads.getlist(name)] if uploads else []
    for name in ("image", "images", "image[]"):
        value = fields.get(name)
        values += value if isinstance(value, list) else [value] if value else []
    if not values:
        raise InvalidRequest("'image' is required: the picture(s) to edit, as files, URLs or data URLs.",
                             param="image")
    if len(values) > MAX_INPUT_IMAGES:
        raise InvalidRequest(f"At most {MAX_INPUT_IMAGES} pictures can be edited at once.", param="image",
                             code="too_many_media")
    st = studio()
    inputs = [input_image(st, v, "image" if len(values) == 1 else f"image[{i}]") for i, v in enumerate(values)]
    return jsonify(generate_images(st, req, "image_edit", inputs, identity))


def generate_images(st: Studio, req: generation.ImageRequest, kind: str, inputs: Sequence[InputImage],
                    identity: Identity | None) -> dict[str, Any]:
    """``n`` pictures, one upstream turn each, as an OpenAI ``ImagesResponse``."""
    choice = generation.resolve_generation_model(req.model, site_models(), kind)
    urls, size = [], None
    for _ in range(req.n):
        turn = open_image_turn(st, choice, req.prompt, req.ratio, inputs, identity, choice.upstream.id)
        translator = _collect(turn)
        urls.append((translator.image_urls[0], turn.proxies))
        size = size or translator.size
    items, output_format = [], None
    for url, proxies in urls:
        body = None
        if req.response_format == "b64_json":
            settings = st.gw.settings
            body, media_type = st.cdn.download(url, st.max_download, settings.MEDIA_DOWNLOAD_TIMEOUT, DOWNLOAD_TRIES,
                                               settings.MEDIA_RETRY_DELAY, proxies)
            output_format = media_type.split("/")[1]
        items.append(generation.image_item(url, body, req.prompt))
    return generation.images_response(int(time.time()), items, size, output_format)


def _collect(turn: Turn) -> generation.ImageTranslator:
    with turn.closing():
        turn.collect()
    return turn.translator  # type: ignore[return-value]


def open_image_turn(st: Studio, choice: generation.GenerationChoice, prompt: str, ratio: str | None,
                    inputs: Sequence[InputImage], identity: Identity | None, model_name: str,
                    include_usage: bool = False, wait: float | None = None) -> Turn:
    """Start an image turn (§8.1, §8.2) like ``turns.open_turn`` starts a chat turn, failover included."""
    gw = st.gw
    check_prompt_size(gw, choice.upstream.id, choice.kind, prompt, ratio)

    def start(account: Identity) -> Turn:
        files = attach(gw, account, inputs)
        chat_id = gw.client.create_chat(account, choice.upstream.id, choice.kind)
        payload = generation.generation_payload(
            kind=choice.kind, model=choice.upstream.id, chat_id=chat_id, prompt=prompt, ratio=ratio, files=files,
            fid=str(uuid.uuid4()), timestamp=int(time.time()))
        translator = generation.ImageTranslator(f"chatcmpl-{uuid.uuid4().hex}", model_name, int(time.time()),
                                                include_usage)
        events = st.calls.image_events(account, chat_id, payload, READBACK_TRIES, gw.settings.MEDIA_RETRY_DELAY)
        turn = Turn(events, translator, f"{account.label} {choice.upstream.id} {choice.kind} chat={chat_id}")
        turn.prime(wait)  # a stream starts (and pings) after ``wait`` s without output; images take a while
        return turn

    account, turn = on_account(gw, identity, start, IMAGE_QUOTA)
    turn.proxies = account.proxies
    if identity is not None:
        turn.on_close = lambda error: account.close()
    else:  # the pool learns quota answers here: they pause image turns on the account, not chat
        turn.on_close = lambda error: gw.pool.release(account, error, IMAGE_QUOTA)
    track_turn(gw.metrics, turn, account, choice.upstream.id, wait is not None, images=True)
    return turn


def check_prompt_size(gw: Gateway, model: str, kind: str, prompt: str, ratio: str | None) -> None:
    """Refuse a prompt the site's size rule would answer with a captcha (§11, §14) before any upstream call."""
    placeholder = str(uuid.UUID(int=0))  # as long as the chat id and fid the real body carries
    gw.client.encode_turn(generation.generation_payload(
        kind=kind, model=model, chat_id=placeholder, prompt=prompt, ratio=ratio, files=[], fid=placeholder,
        timestamp=int(time.time())))


def on_account(
    gw: Gateway, identity: Identity | None, start: Callable[[Identity], T], quota: str,
) -> tuple[Identity, T]:
    """Run ``start`` on the caller's own account, or on the pool's with its failover (as chat turns do).

    ``quota`` names the site's feature quota the turn spends (``images``,
    ``videos``): accounts that spent it are skipped, others keep chatting. A
    pool account comes back still acquired: the caller releases it.
    """
    if identity is None:
        return gw.pool.run(start, feature=quota)
    try:
        return identity, start(identity)
    except ProxyError as exc:
        identity.close()
        raise for_caller(exc, True) from None


# --------------------------------------------------------------------------- input pictures


def input_image(st: Studio, value: Any, param: str) -> InputImage:
    """One input picture, ready to attach: the site's own by reference, anything else as checked bytes.

    Files, data URLs and other URLs are read here, before an account is taken
    (remote ones through the guarded fetcher, §7); they are uploaded with the
    turn's own account when it starts, because uploads belong to an account.
    """
    if isinstance(value, FileStorage):
        data = value.stream.read(media_parts.MAX_BYTES["image"] + 1)
        part = media_parts.MediaPart("image", param, "", filename=media_parts.safe_filename(value.filename or "image"))
        return media_parts.with_bytes(part, data, value.mimetype or "")
    url = generation.reference_url(value)
    if url is None:
        raise InvalidRequest(f"'{param}' must be an image file, an image URL or a data URL.", param=param)
    if generation.allowed_download_url(url, st.cdn.hosts):
        return generation.image_file(url)  # a picture the site made: it takes it by reference
    return fetched_image(st, media_parts.decode_inline(media_parts.parse_part({"type": "image_url", "image_url": url}, param)))


def fetched_image(st: Studio, part: media_parts.MediaPart) -> InputImage:
    """A chat image part with its bytes; a remote one is fetched unless the site itself hosts it."""
    if not part.remote:
        return part
    if generation.allowed_download_url(part.source, st.cdn.hosts):
        return generation.image_file(part.source)
    limit = min(media_parts.MAX_BYTES["image"], media_parts.MAX_FETCH_BYTES)
    got = st.gw.fetcher.fetch(part.source, expect="image", max_bytes=limit, param=part.param)
    return media_parts.with_bytes(part, got.data, got.content_type)


def attach(gw: Gateway, account: Identity, inputs: Sequence[InputImage]) -> list[dict[str, Any]]:
    """``files[]`` entries for the input pictures; parts are uploaded now, with the turn's account (§7.4)."""
    parts = [i for i in inputs if isinstance(i, media_parts.MediaPart)]
    uploaded = iter(upload_media(gw, account, parts))
    return [next(uploaded) if isinstance(i, media_parts.MediaPart) else i for i in inputs]


def _fields() -> tuple[dict[str, Any], Any]:
    """The body as fields: a multipart form (as the ``openai`` SDK sends files) or a JSON object."""
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = {k: v[0] if len(v) == 1 else v for k, v in request.form.lists()}
        return form, request.files
    body = json_body()
    if not isinstance(body, Mapping):
        raise InvalidRequest("The request body must be a JSON object.")
    return dict(body), None


# --------------------------------------------------------------------------- videos


@bp.post("/v1/videos")
@bp.post("/videos")
def videos_create() -> Response:
    st = studio()
    with caller_account() as identity:
        fields, uploads = _fields()
        req = generation.parse_video_request(fields)
        reference = req.reference or (uploads.get("input_reference") if uploads else None)
        choice = generation.resolve_generation_model(req.model, site_models(), "t2v")
        frames = [input_image(st, reference, "input_reference")] if reference else []
        job, _ = submit_video(st, choice, req.prompt, req.ratio, frames, identity, req.model or choice.upstream.id)
    return jsonify(generation.video_object(job, None, int(time.time()), req.prompt))


@bp.get("/v1/videos/<video_id>")
@bp.get("/videos/<video_id>")
def videos_retrieve(video_id: str) -> Response:
    st = studio()
    with caller_account() as caller:
        job = generation.decode_video_id(video_id)
        state = video_state(st, job, owner_of(st.gw, job, caller))
    return jsonify(generation.video_object(job, state, int(time.time()), video_id=video_id))


@bp.get("/v1/videos/<video_id>/content")
@bp.get("/videos/<video_id>/content")
def videos_content(video_id: str) -> Response:
    """The clip's bytes, relayed from the site's CDN (the SDK's ``videos.download_content``)."""
    st = studio()
    with caller_account() as caller:
        job = generation.decode_video_id(video_id)
        owner = owner_of(st.gw, job, caller)
        state = video_state(st, job, owner)
    if state.status != "success" or not state.url:
        raise InvalidRequest(f"The video is not ready (status {state.status}); poll GET /v1/videos/{video_id}.",
                             param="video_id", code="video_not_ready")
    settings = st.gw.settings
    media_type, body = st.cdn.stream(state.url, st.max_download, settings.MEDIA_DOWNLOAD_TIMEOUT, DOWNLOAD_TRIES,
                                     settings.MEDIA_RETRY_DELAY, owner.proxies)
    return Response(body, mimetype=media_type, direct_passthrough=True)


def submit_video(st: Studio, choice: generation.GenerationChoice, prompt: str, ratio: str | None,
                 frames: Sequence[InputImage], identity: Identity | None,
                 model_name: str) -> tuple[generation.VideoJob, Identity]:
    """Post the t2v/i2v turn and find its task (§8.3); a pool account is given back once the task exists."""
    gw = st.gw
    kind = "i2v" if frames else "t2v"
    # Without a size the first frame decides an i2v clip's shape; a t2v clip gets the web app's 16:9.
    ratio = ratio or (None if frames else "16:9")
    check_prompt_size(gw, choice.upstream.id, kind, prompt, ratio)

    def start(account: Identity) -> str:
        files = attach(gw, account, frames)
        chat_id = gw.client.create_chat(account, choice.upstream.id, kind)
        payload = generation.generation_payload(
            kind=kind, model=choice.upstream.id, chat_id=chat_id, prompt=prompt, ratio=ratio, files=files,
            fid=str(uuid.uuid4()), timestamp=int(time.time()))
        answer = st.calls.submit_task(account, chat_id, payload)
        task_id = generation.find_task_id(answer) or st.calls.read_back(
            account, chat_id, generation.find_task_id, READBACK_TRIES, gw.settings.MEDIA_RETRY_DELAY)
        if not task_id:
            raise UpstreamError("The site accepted the video request but named no task. Retry.",
                                code="upstream_no_task")
        return task_id

    account, task_id = on_account(gw, identity, start, VIDEO_QUOTA)
    if identity is None:
        gw.pool.release(account, None)  # status polls are reads; they do not hold the account
    logger.info("video task %s submitted on %s (%s)", task_id, account.label, kind)
    note_usage(account.label, choice.upstream.id, videos=1)
    job = generation.VideoJob(task_id, account_ref(account), int(time.time()), kind, ratio or "auto", model_name[:64])
    return job, account


def account_ref(identity: Identity) -> str:
    """A short name of an account that a video id can carry without revealing it."""
    basis = identity.account_id or identity.token or identity.label
    return hashlib.sha256(basis.encode()).hexdigest()[:16]


def owner_of(gw: Gateway, job: generation.VideoJob, caller: Identity | None) -> Identity:
    """The account whose task this is: the caller's own (client mode) or one of the pool's."""
    if caller is not None and account_ref(caller) == job.account:
        return caller
    for identity in gw.pool.identities if caller is None else ():
        if not identity.token:  # a fresh worker that has not used this account yet
            try:
                gw.pool.renew(identity, stale="")
            except ProxyError as exc:
                logger.info("%s: no token to check video ownership (%s)", identity.label, exc.message)
                continue
        if account_ref(identity) == job.account:
            return identity
    raise NotFound("This video belongs to an account this proxy no longer has (or to other credentials).",
                   param="video_id", code="video_not_found")


def video_state(st: Studio, job: generation.VideoJob, owner: Identity) -> generation.TaskState:
    """One status read of the job's task; a pool account's lapsed token is renewed once (waits are long)."""
    pool, stale = st.gw.pool, owner.token
    try:
        try:
            return generation.task_state(st.calls.task_status(owner, job.task_id))
        except UpstreamAuthError:
            if owner not in pool.identities or not owner.renewable or not pool.renew(owner, stale=stale):
                raise
            return generation.task_state(st.calls.task_status(owner, job.task_id))
    except UpstreamError as exc:
        if exc.code == "upstream_not_found":
            raise NotFound("The site no longer knows this video's task.", param="video_id",
                           code="video_not_found") from None
        raise


def poll_video(st: Studio, job: generation.VideoJob, owner: Identity,
               budget: float) -> Iterator[generation.TaskState | None]:
    """Poll until the task ends or ``budget`` seconds pass; yields None at least every ``PING_INTERVAL_SECONDS``.

    The last item is the final (or, when out of time, the latest) state. A
    passing failure of one poll is tolerated; ``MAX_POLL_FAILURES`` in a row,
    or one that retrying cannot fix, ends the wait with that error.
    """
    deadline = time.monotonic() + budget
    failures = 0
    while True:
        try:
            state = video_state(st, job, owner)
            failures = 0
        except ProxyError as exc:
            failures += 1
            if not exc.retryable or failures >= MAX_POLL_FAILURES:
                raise
            logger.info("video %s: status poll failed (%s); trying again", job.task_id, exc.message)
            state = generation.TaskState("running")
        left = deadline - time.monotonic()
        if state.status != "running" or left <= 0:
            yield state
            return
        wait = min(st.gw.settings.VIDEO_POLL_INTERVAL, left)
        while wait > 0:
            step = min(wait, st.gw.settings.PING_INTERVAL_SECONDS)
            time.sleep(step)
            wait -= step
            yield None


# --------------------------------------------------------------------------- chat model suffixes


def generation_chat(chat: openai_chat.ChatRequest, identity: Identity | None) -> Response:
    """A chat request for a ``-image``, ``-image_edit`` or ``-video`` model: generation, answered as chat.

    The prompt is the last user message. Its images are the pictures to edit
    (``-image`` with a picture edits it) or the video's first frame; without
    one, ``-image_edit`` edits the newest picture the site made in the
    conversation, and draws a new one when there is none.
    """
    st = studio()
    kind = generation.generation_kind(chat.model) or "t2i"
    choice = generation.resolve_generation_model(chat.model, site_models(), kind, strict=True)
    prompt = generation.last_user_text(chat.messages)
    if any(part.kind != "image" for part in chat.media):
        raise InvalidRequest(
            f"'{echo(chat.model)}' takes pictures only; send audio, video and documents to a chat model.",
            param="messages", code="unsupported_content")
    inputs = [fetched_image(st, part) for part in chat.media]
    if kind == "t2v":
        if len(inputs) > 1:
            raise InvalidRequest("A video starts from at most one picture.", param="messages", code="too_many_media")
        return _video_chat(st, chat, choice, prompt, inputs, identity)
    if not inputs and kind == "image_edit":
        shown = [u for u in generation.history_images(chat.messages) if generation.allowed_download_url(u, st.cdn.hosts)]
        inputs = [generation.image_file(shown[-1])] if shown else []
    wanted = "image_edit" if inputs else "t2i"
    if wanted != choice.kind and wanted in choice.upstream.generates:
        choice = generation.GenerationChoice(wanted, choice.upstream)
    ping = st.gw.settings.PING_INTERVAL_SECONDS
    turn = open_image_turn(st, choice, prompt, None, inputs, identity, chat.model, chat.include_usage,
                           wait=ping if chat.stream else None)
    if chat.stream:
        return Response(sse(turn, ping), mimetype="text/event-stream", headers=SSE_HEADERS)
    with turn.closing():
        return jsonify(turn.collect())


def _video_chat(st: Studio, chat: openai_chat.ChatRequest, choice: generation.GenerationChoice, prompt: str,
                frames: Sequence[InputImage], identity: Identity | None) -> Response:
    job, owner = submit_video(st, choice, prompt, None, frames, identity, chat.model)
    video_id = generation.encode_video_id(job)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    settings = st.gw.settings
    if chat.stream:
        events = _video_events(st, job, owner, video_id, completion_id, chat.model, created, chat.include_usage)
        return Response(_closing(events, owner if identity is not None else None), mimetype="text/event-stream",
                        headers=SSE_HEADERS)
    try:
        budget = min(settings.VIDEO_SYNC_WAIT, settings.VIDEO_TIMEOUT)
        state = [s for s in poll_video(st, job, owner, budget) if s is not None][-1]
    finally:
        if identity is not None:
            owner.close()
    if state.status == "failed":
        raise UpstreamError(f"The site could not make the video: {state.message}", code="video_generation_failed")
    if state.status == "success":
        content = generation.video_markdown(state.url or "")
    else:
        content = generation.video_pending_note(video_id)
    return jsonify(generation.chat_completion(completion_id, chat.model, created, content))


def _video_events(st: Studio, job: generation.VideoJob, owner: Identity, video_id: str, completion_id: str,
                  model: str, created: int, include_usage: bool) -> Iterator[bytes]:
    """The SSE body of a video chat: a progress note, pings while the site works, then the video."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return encode_event(generation.chat_chunk(completion_id, model, created, delta, finish))

    yield chunk({"role": "assistant", "content": "", "reasoning_content": generation.video_started_note(video_id)})
    try:
        for state in poll_video(st, job, owner, st.gw.settings.VIDEO_TIMEOUT):
            if state is None:
                yield PING
            elif state.status == "success":
                yield chunk({"content": generation.video_markdown(state.url or "")})
                yield chunk({}, "stop")
                if include_usage:
                    yield encode_event(generation.usage_chunk(completion_id, model, created))
            elif state.status == "failed":
                raise UpstreamError(f"The site could not make the video: {state.message}",
                                    code="video_generation_failed", retryable=False)
            else:
                raise UpstreamTimeout(f"The video is still not ready after VIDEO_TIMEOUT "
                                      f"({st.gw.settings.VIDEO_TIMEOUT:g} s); fetch it later with "
                                      f"GET /v1/videos/{video_id}.")
    except ProxyError as exc:
        logger.warning("video stream ended by a failure: %s", exc.message)
        yield encode_event(exc.to_dict())
    except Exception:  # the boundary: nothing may escape after headers are sent
        logger.exception("video stream failed")
        yield encode_event(UpstreamError("Internal error in the proxy while waiting for the video.").to_dict())
    yield b"data: [DONE]\n\n"


def _closing(events: Iterator[bytes], identity: Identity | None) -> Iterator[bytes]:
    """Close a caller's own account session when the stream ends, however it ends."""
    try:
        yield from events
    finally:
        if identity is not None:
            identity.close()
