"""Pure mapping for generated media (§8): suffixes, sizes, payloads, image and video answers.

Like ``transform.openai_chat``, nothing here does I/O or reads the clock: the routes in
``routes.images_videos`` and the site calls in ``qwen_client.generation`` use these functions to
decide what to send and how to read what comes back, so every rule can be
tested as a table.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from errors import InvalidRequest, ModelNotFound, NotFound, echo
from transform import openai_chat
from transform.answer import StreamTranslator, openai_usage

IMAGE_KINDS = frozenset({"t2i", "image_edit"})
#: Phases whose ``content`` is an image URL, or whose ``extra.image_list`` names images (§6.3, §8.1, §8.2).
IMAGE_PHASES = frozenset({"image_gen", "image_edit", "image_gen_tool", "image_edit_tool"})
VIDEO_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4")
IMAGE_RATIOS = VIDEO_RATIOS + ("auto",)
#: OpenAI sizes whose ratio the site does not offer, mapped to the nearest one as peers do (R1, R2).
SIZE_ALIASES = {"1536x1024": "4:3", "1024x1536": "3:4", "1792x1024": "16:9", "1024x1792": "9:16"}
#: A ``WxH`` this close to an offered ratio means that ratio (the site's own 2688x1536 is "16:9").
RATIO_TOLERANCE = 0.03
#: Each image is one upstream turn, taken one after another; more would hold a request for minutes.
MAX_IMAGES = 4
#: Measured 93-343 s per clip (R9); progress is estimated against this.
TYPICAL_VIDEO_SECONDS = 180
#: The site makes clips of about five seconds whatever is asked (§8.3: no duration field).
VIDEO_SECONDS = "5"
_URL = re.compile(r"https?://[^\s\"'<>()\[\]]+")
#: Neither part runs over a ``[`` or ``(``: each "![" then scans only to the next one (linear on any text).
_MARKDOWN_IMAGE = re.compile(r"!\[[^\[\]]*\]\((https?://[^\s()\[\]]+)\)")
_TASK_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"), (0, b"\xff\xd8\xff", "image/jpeg"), (0, b"GIF8", "image/gif"),
    (8, b"WEBP", "image/webp"), (4, b"ftyp", "video/mp4"), (0, b"\x1aE\xdf\xa3", "video/webm"),
)


# --------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class GenerationChoice:
    """A model id resolved to a generation kind (``t2i``, ``image_edit``, ``t2v``) and an upstream model."""

    kind: str
    upstream: openai_chat.ModelInfo


def generation_kind(requested: str) -> str | None:
    """The generation kind a model id's suffix asks for, or None for chat models."""
    name = requested.strip().lower()
    for suffix, kind in (*openai_chat.MEDIA_SUFFIXES, *openai_chat.MEDIA_SUFFIX_ALIASES):
        if name.endswith(suffix) and len(name) > len(suffix):
            return kind
    return None


def resolve_generation_model(
    requested: str | None, models: Sequence[openai_chat.ModelInfo], kind: str, strict: bool = False
) -> GenerationChoice:
    """The upstream model for a generation request.

    Ids of the site, with or without the kind's suffix, are taken as they are.
    Anything else (``dall-e-3``, ``gpt-image-1``, ``sora-2``, nothing) means
    the first model of the site that offers this kind, unless ``strict``
    (chat requests name their model): then it is a 404.
    """
    able = [m for m in models if kind in m.generates]
    if not able:
        raise ModelNotFound(f"No model of the site offers {_KIND_NAMES[kind]} right now.", param="model")
    name = (requested or "").strip().lower()
    for suffix, suffix_kind in (*openai_chat.MEDIA_SUFFIXES, *openai_chat.MEDIA_SUFFIX_ALIASES):
        if suffix_kind == kind and name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for model in models:
        if model.id.lower() == name:
            if kind not in model.generates:
                names = ", ".join(m.id for m in able[:4])
                raise ModelNotFound(f"The model '{model.id}' does not offer {_KIND_NAMES[kind]}; "
                                    f"these do: {names}.", param="model")
            return GenerationChoice(kind, model)
    if strict:
        examples = ", ".join(m.id + next(s for s, k in openai_chat.MEDIA_SUFFIXES if k == kind) for m in able[:3])
        raise ModelNotFound(f"The model '{echo(requested)}' does not exist. Try one of: {examples}.", param="model")
    return GenerationChoice(kind, able[0])


_KIND_NAMES = {"t2i": "image generation", "image_edit": "image editing", "t2v": "video generation"}


# --------------------------------------------------------------------------- requests


def size_to_ratio(size: Any, kind: str) -> str | None:
    """The site's aspect ratio for an OpenAI ``size`` (§8.1, §8.3); None lets the site choose."""
    if size is None or size == "":
        return None
    allowed = IMAGE_RATIOS if kind == "t2i" else VIDEO_RATIOS
    text = str(size).strip().lower()
    if text == "auto":
        return "auto" if kind == "t2i" else None
    if text in allowed:
        return text
    if text in SIZE_ALIASES:
        return SIZE_ALIASES[text]
    match = re.fullmatch(r"(\d{2,5})\s*[x×*]\s*(\d{2,5})", text)
    if match and int(match.group(2)):
        wanted = int(match.group(1)) / int(match.group(2))
        for ratio in VIDEO_RATIOS:
            w, h = (int(n) for n in ratio.split(":"))
            if abs(wanted / (w / h) - 1) <= RATIO_TOLERANCE:
                return ratio
    raise InvalidRequest(
        f"size '{echo(size)}' is not available: the site makes {', '.join(allowed)} pictures. Send one of those "
        "ratios or a size of that shape, e.g. 1024x1024, 1792x1024 (16:9), 1024x1792 (9:16), 1536x1024 (4:3).",
        param="size", code="unsupported_size",
    )


@dataclasses.dataclass(frozen=True)
class ImageRequest:
    """A validated ``/v1/images/generations`` or ``/v1/images/edits`` body."""

    prompt: str
    model: str | None = None
    n: int = 1
    ratio: str | None = None
    response_format: str = "url"


def _prompt_and_model(fields: Mapping[str, Any]) -> tuple[str, str | None]:
    """The two fields every generation body has: a non-empty prompt, an optional model id."""
    if not isinstance(fields, Mapping):
        raise InvalidRequest("The request body must be a JSON object.")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("'prompt' is required and must be a non-empty string.", param="prompt")
    model = fields.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("'model' must be a string.", param="model")
    return prompt, model


def parse_image_request(fields: Mapping[str, Any], kind: str = "t2i") -> ImageRequest:
    """Validate an images body; multipart forms give every value as a string."""
    prompt, model = _prompt_and_model(fields)
    n = _int_field(fields, "n", 1)
    if not 1 <= n <= MAX_IMAGES:
        raise InvalidRequest(f"'n' must be between 1 and {MAX_IMAGES}: each image is one turn on the site.",
                             param="n")
    response_format = fields.get("response_format") or "url"
    if response_format not in ("url", "b64_json"):
        raise InvalidRequest("'response_format' must be 'url' or 'b64_json'.", param="response_format")
    # Edits keep the input's shape: the site takes no size for them (§8.2).
    ratio = size_to_ratio(fields.get("size"), kind) if kind == "t2i" else None
    return ImageRequest(prompt.strip(), model or None, n, ratio, response_format)


@dataclasses.dataclass(frozen=True)
class VideoRequest:
    """A validated ``POST /v1/videos`` body (JSON, or multipart as the ``openai`` SDK sends it)."""

    prompt: str
    model: str | None = None
    ratio: str | None = None
    reference: Any = None  # input_reference / image: a URL, data URL, {"image_url": ...} or a file


def parse_video_request(fields: Mapping[str, Any]) -> VideoRequest:
    """Validate a videos body; a field that is present must be usable, or nothing is sent to the site."""
    prompt, model = _prompt_and_model(fields)
    size = next((fields[k] for k in ("size", "aspect_ratio", "ratio") if fields.get(k) is not None), None)
    if size is not None and not isinstance(size, str):
        raise InvalidRequest("'size' must be a string such as '1280x720' or '16:9'.", param="size")
    key = next((k for k in ("input_reference", "image", "first_frame") if fields.get(k) is not None), None)
    reference = fields[key] if key else None
    if key and (not reference or not isinstance(reference, (str, Mapping))):
        raise InvalidRequest(f"'{key}' must be an image URL, a data URL or an object with 'image_url'.", param=key)
    return VideoRequest(prompt.strip(), model or None, size_to_ratio(size, "t2v"), reference)


def reference_url(reference: Any) -> str | None:
    """The URL inside an ``input_reference`` value, if it is one rather than a file."""
    if isinstance(reference, str):
        text = reference.strip()
        if text.startswith("{"):
            try:
                return reference_url(json.loads(text))
            except ValueError:
                return None
        return text or None
    if isinstance(reference, Mapping):
        for key in ("image_url", "url", "image"):
            value = reference.get(key)
            if isinstance(value, Mapping):
                value = value.get("url")
            if isinstance(value, str) and value:
                return value
    return None


def _int_field(fields: Mapping[str, Any], key: str, default: int) -> int:
    value = fields.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) < 20:
        return int(value)  # ASCII only: int() refuses "²", which isdigit() accepts
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidRequest(f"'{key}' must be an integer.", param=key)


def last_user_text(messages: Sequence[tuple[str, str]]) -> str:
    """The prompt of a generation turn: the newest user message (history would confuse the painter)."""
    for role, text in reversed(messages):
        if role == "user" and text.strip():
            return text.strip()
    raise InvalidRequest("The last user message has no text to use as the prompt.", param="messages")


def history_images(messages: Sequence[tuple[str, str]]) -> list[str]:
    """Image URLs the assistant showed earlier as Markdown, oldest first (to edit "the last picture")."""
    return [url for role, text in messages if role == "assistant" for url in _MARKDOWN_IMAGE.findall(text)]


# --------------------------------------------------------------------------- payloads


def generation_payload(
    *, kind: str, model: str, chat_id: str, prompt: str, ratio: str | None,
    files: Sequence[Mapping[str, Any]] = (), fid: str, timestamp: int,
) -> dict[str, Any]:
    """The completion body of a generation turn: the chat body with the kind's differences (§8)."""
    payload = openai_chat.completion_payload(
        model=model, chat_id=chat_id, content=prompt, chat_type=kind, fid=fid, timestamp=timestamp,
        config=openai_chat.feature_config(False, False),
    )
    message = payload["messages"][0]
    message["files"] = [dict(f) for f in files]
    payload["stream"] = kind in IMAGE_KINDS  # videos answer with a task id only without streaming
    if ratio and kind != "image_edit":
        payload["size"] = message["extra"]["meta"]["size"] = ratio
    return payload


def image_file(url: str) -> dict[str, Any]:
    """A ``files[]`` entry for an image the site already hosts; the minimal form works (§7.4)."""
    name = urlsplit(url).path.rsplit("/", 1)[-1] or "image.png"
    return {"type": "image", "file": {}, "id": "", "url": url, "name": name, "status": "uploaded",
            "file_type": "image/png", "showType": "image", "file_class": "vision"}


# --------------------------------------------------------------------------- reading answers


def delta_image_urls(delta: Mapping[str, Any]) -> list[str]:
    """Image URLs in one stream delta: image-phase content and ``extra.image_list`` (§6.3, §8.1)."""
    urls = []
    content = delta.get("content")
    if delta.get("phase") in IMAGE_PHASES and isinstance(content, str) and _URL.fullmatch(content.strip()):
        urls.append(content.strip())
    extra = delta.get("extra")
    for item in (extra.get("image_list") or ()) if isinstance(extra, dict) else ():
        image = item.get("image") if isinstance(item, dict) else None
        if isinstance(image, str) and _URL.fullmatch(image.strip()):
            urls.append(image.strip())
    return urls


def event_image_urls(event: Mapping[str, Any]) -> list[str]:
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict):
            return delta_image_urls(delta)
    return []


def _strings(obj: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) of every leaf under ``obj``, depth first."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend(reversed([(str(k), v) for k, v in value.items()]))
        elif isinstance(value, list):
            stack.extend(reversed([(key, v) for v in value]))
        else:
            yield key, value


def last_assistant_message(detail: Any) -> Mapping[str, Any] | None:
    """The newest assistant message of a ``GET /api/v2/chats/<id>`` answer (§9)."""
    data = detail.get("data") if isinstance(detail, Mapping) else None
    chat = data.get("chat") if isinstance(data, Mapping) else None
    messages = chat.get("messages") if isinstance(chat, Mapping) else None
    if not isinstance(messages, list):
        history = chat.get("history") if isinstance(chat, Mapping) else None
        messages = list((history or {}).get("messages", {}).values()) if isinstance(history, Mapping) else []
    found = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "assistant"]
    return found[-1] if found else None


def readback_image_urls(detail: Any) -> list[str]:
    """Image URLs of the last answer of a chat read back (§8.1: ``content_list[].content``)."""
    message = last_assistant_message(detail)
    if message is None:
        return []
    urls = [v.strip() for _, v in _strings(message.get("content_list") or [])
            if isinstance(v, str) and _URL.fullmatch(v.strip())]
    urls += [u for _, v in _strings(message.get("extra") or {}) if isinstance(v, str) for u in _URL.findall(v)]
    return list(dict.fromkeys(urls))


def find_task_id(answer: Any) -> str | None:
    """The video task id: ``data.messages[0].extra.wanx.task_id``, else any ``task_id``/``taskId`` (§8.3)."""
    try:
        task_id = answer["data"]["messages"][0]["extra"]["wanx"]["task_id"]
    except (KeyError, IndexError, TypeError):
        task_id = next((v for k, v in _strings(answer) if k in ("task_id", "taskId") and isinstance(v, str)
                        and v), None)
    return task_id if isinstance(task_id, str) and _TASK_ID.fullmatch(task_id) else None


@dataclasses.dataclass(frozen=True)
class TaskState:
    """A video task as the status routes report it (§8.3)."""

    status: str  # "running" | "success" | "failed"
    url: str | None = None
    message: str = ""


def task_state(answer: Any) -> TaskState:
    """Read either status generation: v2 ``{"data": {...}}`` or v1's flat object.

    Any status other than ``running`` and ``success`` is a failure (R9).
    """
    data = answer.get("data") if isinstance(answer, Mapping) else None
    fields = data if isinstance(data, Mapping) and "task_status" in data else answer
    if not isinstance(fields, Mapping):
        return TaskState("failed", message="the site answered the status query with no task")
    status = str(fields.get("task_status") or "").lower()
    message = str(fields.get("message") or "")
    if status == "running":
        return TaskState("running", message=message)
    if status == "success":
        content = fields.get("content")
        urls = _URL.findall(content) if isinstance(content, str) else []
        if urls:
            return TaskState("success", urls[0], message)
        return TaskState("failed", message="the site reported success without a video URL")
    return TaskState("failed", message=message or f"the task ended with status '{status or 'none'}'")


def sniff_output_type(head: bytes) -> str | None:
    """The media type from magic bytes; None for anything else (the CDN's "not ready" page is HTML)."""
    for offset, magic, media_type in _MAGIC:
        if head[offset: offset + len(magic)] == magic:
            return media_type
    return None


def allowed_download_url(url: str, hosts: Sequence[str]) -> bool:
    """Whether the proxy may download ``url``: http(s), no credentials, host on the allow list."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    return parts.scheme in ("http", "https") and not parts.username and host in {h.lower() for h in hosts}


# --------------------------------------------------------------------------- answers


def image_markdown(urls: Sequence[str], after_text: bool = False) -> str:
    text = "\n\n".join(f"![image]({url})" for url in urls)
    return ("\n\n" + text) if after_text and text else text


def video_markdown(url: str) -> str:
    return f'<video src="{url}" controls></video>\n\n[Download the video]({url})'


class ImageTranslator(StreamTranslator):
    """Image turns in chat form (§8.1): each new image URL becomes a Markdown image in ``content``.

    Image planning (``image_gen_think``) goes to ``reasoning_content``; answer
    text passes as usual. The site may finish the answer phase before the
    image arrives, so an image turn ends at the end of the stream, never at
    ``status: finished``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image_urls: list[str] = []
        self.size: str | None = None
        self.content = ""  # all content sent, in order: the non-stream answer is the same text

    @property
    def has_answer(self) -> bool:
        return bool(self.image_urls)

    def _on_delta(self, delta: Mapping[str, Any]) -> list[dict[str, Any]]:
        phase = delta.get("phase")
        chunks: list[dict[str, Any]] = []
        if phase == "image_gen_think":
            content = delta.get("content")
            piece = self.reasoning.feed(content if isinstance(content, str) else "")
            chunks = [self._chunk({"reasoning_content": piece})] if piece else []
        elif phase not in IMAGE_PHASES:
            chunks = super()._on_delta(delta)
            self.finished = False
        new = [u for u in dict.fromkeys(delta_image_urls(delta)) if u not in self.image_urls]
        if new:
            self.image_urls += new
            self._note_size(delta)
            chunks.append(self._chunk({"content": image_markdown(new, after_text=bool(self.content))}))
        return self._record(chunks)

    def _note_size(self, delta: Mapping[str, Any]) -> None:
        extra = delta.get("extra")
        hw = extra.get("output_image_hw") if isinstance(extra, dict) else None
        if self.size is None and isinstance(hw, list) and hw and isinstance(hw[0], list) and len(hw[0]) == 2:
            self.size = f"{hw[0][1]}x{hw[0][0]}"

    def _record(self, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for chunk in chunks:
            for choice in chunk["choices"]:
                self.content += choice["delta"].get("content") or ""
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        return self._record(super().finish())

    def completion(self) -> dict[str, Any]:
        result = super().completion()
        result["choices"][0]["message"]["content"] = self.content
        return result


def images_response(created: int, items: Sequence[Mapping[str, Any]], size: str | None = None,
                    output_format: str | None = None) -> dict[str, Any]:
    """The OpenAI ``ImagesResponse``: ``data[]`` of ``{"url"}`` or ``{"b64_json"}`` items."""
    response: dict[str, Any] = {"created": created, "data": [dict(i) for i in items]}
    if size:
        response["size"] = size
    if output_format:
        response["output_format"] = output_format
    return response


def image_item(url: str, body: bytes | None, prompt: str) -> dict[str, Any]:
    if body is None:
        return {"url": url, "revised_prompt": prompt}
    return {"b64_json": base64.b64encode(body).decode("ascii"), "revised_prompt": prompt}


# --------------------------------------------------------------------------- video jobs


@dataclasses.dataclass(frozen=True)
class VideoJob:
    """Everything ``GET /v1/videos/<id>`` needs, carried in the id itself.

    The id is self-contained so that any worker process can answer it: no
    shared store, and nothing lost on restart while the site keeps the task.
    """

    task_id: str
    account: str  # short hash naming the account that owns the task
    created_at: int
    kind: str
    size: str
    model: str


def encode_video_id(job: VideoJob) -> str:
    raw = json.dumps([1, job.task_id, job.account, job.created_at, job.kind, job.size, job.model],
                     separators=(",", ":"))
    return "video_" + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_video_id(video_id: str) -> VideoJob:
    """The job behind an id this proxy issued; ``NotFound`` for anything else."""
    token = video_id[6:] if video_id.startswith("video_") else ""
    try:
        version, task_id, account, created, kind, size, model = json.loads(
            base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if version != 1 or not _TASK_ID.fullmatch(task_id) or not isinstance(created, int):
            raise ValueError(video_id)
        return VideoJob(str(task_id), str(account), created, str(kind), str(size), str(model))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise NotFound(f"No video with id '{echo(video_id)}'; ids come from POST /v1/videos.",
                       param="video_id", code="video_not_found") from None


def video_object(job: VideoJob, state: TaskState | None, now: int, prompt: str | None = None,
                 video_id: str | None = None) -> dict[str, Any]:
    """The OpenAI ``Video`` object; a finished one also carries the site's ``url`` of the clip."""
    status = {"running": "in_progress", "success": "completed", "failed": "failed"}[state.status] if state \
        else "in_progress"
    progress = 100 if status == "completed" else min(95, (now - job.created_at) * 100 // TYPICAL_VIDEO_SECONDS)
    video: dict[str, Any] = {
        "id": video_id or encode_video_id(job), "object": "video", "created_at": job.created_at,
        "completed_at": now if status == "completed" else None, "error": None, "expires_at": None,
        "model": job.model, "progress": max(0, progress) if status != "failed" else 0, "prompt": prompt,
        "remixed_from_video_id": None, "seconds": VIDEO_SECONDS, "size": job.size, "status": status,
    }
    if state is not None and state.status == "success":
        video["url"] = state.url
    if state is not None and state.status == "failed":
        video["error"] = {"code": "video_generation_failed",
                          "message": f"The site could not make the video: {state.message}"}
    return video


# --------------------------------------------------------------------------- videos in chat form


def video_started_note(video_id: str) -> str:
    return (f"Making the video on Qwen (usually 1 to 6 minutes). If this stream breaks off, fetch it "
            f"later: GET /v1/videos/{video_id}\n")


def video_pending_note(video_id: str) -> str:
    return (f"The video is still being made (usually 1 to 6 minutes in all). Fetch it with "
            f"GET /v1/videos/{video_id} (the openai SDK: client.videos.retrieve(\"{video_id}\")).")


def chat_chunk(completion_id: str, model: str, created: int, delta: Mapping[str, Any],
               finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(completion_id: str, model: str, created: int) -> dict[str, Any]:
    """Video turns report no tokens; the chunk is still sent when the client asked for usage."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": openai_usage(None)}


def chat_completion(completion_id: str, model: str, created: int, content: str) -> dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": openai_usage(None)}
