"""Media in OpenAI content parts: what a request carries, checked against the site's limits (§7.4, §7.6).

Pure functions, no I/O: parts are read into :class:`MediaPart` values, inline
data is decoded, fetched bytes are checked, and uploads are described as the
``files[]`` entries the site expects. Fetching URLs lives in ``routes/fetch.py`` and
uploading in ``qwen_client/uploads.py``. Every refusal is an ``InvalidRequest`` that
names the part (``messages[i].content[j]``) and says what would work instead.

Only the newest user message's media are sent; media in earlier messages
become a short placeholder in the flattened history (see ``place_media``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import posixpath
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from errors import InvalidRequest, echo

KINDS = ("image", "document", "audio", "video")
MB = 1024 * 1024
#: Per turn (§7.6; where peers disagree, the lower figure): count and bytes per file.
MAX_COUNT = {"image": 5, "document": 5, "audio": 1, "video": 1}
MAX_BYTES = {"image": 10 * MB, "document": 20 * MB, "audio": 100 * MB, "video": 500 * MB}
#: The most the proxy downloads for one remote URL, whatever the kind: the bytes are held in memory.
MAX_FETCH_BYTES = 64 * MB
#: Kinds that can share a turn with another kind; audio and video go alone (§7.4).
MIXABLE = frozenset({"image", "document"})

#: The site's names for each kind: getstsToken ``filetype``, files[] ``type``/``showType`` and ``file_class``.
STS_FILETYPE = {"image": "image", "document": "file", "audio": "audio", "video": "video"}
FILE_TYPE = {"image": "image", "document": "file", "audio": "audio", "video": "video"}
FILE_CLASS = {"image": "vision", "document": "document", "audio": "audio", "video": "video"}

_EXTENSIONS = {
    "image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp", "image/bmp": "bmp",
    "image/tiff": "tiff", "image/heic": "heic", "image/heif": "heif",
    "audio/wav": "wav", "audio/mpeg": "mp3", "audio/mp4": "m4a", "audio/aac": "aac", "audio/ogg": "ogg",
    "audio/flac": "flac", "audio/webm": "weba", "audio/opus": "opus", "audio/amr": "amr",
    "video/mp4": "mp4", "video/webm": "webm", "video/quicktime": "mov", "video/x-msvideo": "avi",
    "video/x-matroska": "mkv", "video/mpeg": "mpeg", "video/x-flv": "flv", "video/3gpp": "3gp",
    "application/pdf": "pdf", "text/plain": "txt", "text/markdown": "md", "text/csv": "csv",
    "text/html": "html", "application/json": "json", "application/xml": "xml", "text/xml": "xml",
    "application/msword": "doc", "application/rtf": "rtf", "application/epub+zip": "epub",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.ms-powerpoint": "ppt",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
}
_BY_EXTENSION = {ext: mime for mime, ext in _EXTENSIONS.items()} | {
    "jpeg": "image/jpeg", "tif": "image/tiff", "mp3": "audio/mpeg", "m4v": "video/mp4", "markdown": "text/markdown",
    "py": "text/plain", "js": "text/plain", "ts": "text/plain", "log": "text/plain", "yaml": "text/plain",
    "yml": "text/plain", "toml": "text/plain", "ini": "text/plain", "sh": "text/plain", "sql": "text/plain",
}
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "audio/x-wav": "audio/wav",
            "audio/wave": "audio/wav", "audio/vnd.wave": "audio/wav", "audio/mp3": "audio/mpeg",
            "audio/x-m4a": "audio/mp4", "audio/m4a": "audio/mp4", "audio/x-flac": "audio/flac"}
#: ``input_audio.format`` values (OpenAI's wav/mp3, plus what other clients send).
_AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mpeg", "m4a": "audio/mp4", "aac": "audio/aac",
                  "ogg": "audio/ogg", "flac": "audio/flac", "webm": "audio/webm", "opus": "audio/opus",
                  "pcm16": "", "g711_ulaw": "", "g711_alaw": ""}
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/unknown"})
_VIDEO_PART_TYPES = ("video_url", "input_video", "video")
SUPPORTED_PARTS = "text, image_url, input_audio, file, video_url"


@dataclasses.dataclass(frozen=True)
class MediaPart:
    """One non-text content part: where its bytes come from and, once known, the bytes themselves."""

    kind: str  # image | document | audio | video
    param: str  # its place in the request, for error messages
    source: str  # a data URL, bare base64, or an http(s) URL
    mime: str = ""  # declared type; settled when the bytes are known
    filename: str = ""
    data: bytes | None = None

    @property
    def remote(self) -> bool:
        return self.data is None and is_http_url(self.source)

    def __repr__(self) -> str:  # never dump megabytes of base64 into a log line
        size = "?" if self.data is None else len(self.data)
        return f"MediaPart({self.kind}, {self.param}, {self.mime or '?'}, {self.filename!r}, {size} bytes)"


# --------------------------------------------------------------------------- parts


def is_http_url(text: str) -> bool:
    """Whether ``text`` starts with an http(s) scheme, in any case (schemes are case-insensitive)."""
    return text[:8].lower().startswith(("http://", "https://"))


def split_content(content: Any, param: str) -> tuple[str, tuple[MediaPart, ...]]:
    """A message's ``content`` as its text (parts joined by newlines) and its media parts, in order."""
    if content is None or isinstance(content, str):
        return content or "", ()
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or an array of content parts.", param=param)
    texts: list[str] = []
    media: list[MediaPart] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind is None:
            raise InvalidRequest(f"{where} must be an object with a 'type'.", param=where)
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            texts.append(part[kind])
        else:
            media.append(parse_part(part, where))
    return "\n".join(texts), tuple(media)


def parse_part(part: Mapping[str, Any], param: str) -> MediaPart:
    """The shape of one media part, without decoding it (earlier turns' parts are never decoded)."""
    kind = part.get("type")
    if kind in ("image_url", "image"):
        value = part.get(kind)
        url = value.get("url") if isinstance(value, Mapping) else value  # ``detail`` is ignored
        return _url_part("image", url, param, f"{param}.{kind}.url")
    if kind in _VIDEO_PART_TYPES:
        value = part.get(kind)
        url = value.get("url") if isinstance(value, Mapping) else value
        return _url_part("video", url, param, f"{param}.{kind}.url")
    if kind == "input_audio":
        return _audio_part(part.get("input_audio"), param)
    if kind == "file":
        return _file_part(part.get("file"), param)
    raise InvalidRequest(
        f"{param}: '{echo(kind)}' content parts are not supported; use {SUPPORTED_PARTS}.",
        param=param, code="unsupported_content",
    )


def _url_part(kind: str, url: Any, param: str, field: str) -> MediaPart:
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest(f"{field} must be a URL string (https://… or data:…;base64,…).", param=param)
    url = url.strip()
    if url[:5].lower() == "data:":
        url = "data:" + url[5:]
        return MediaPart(kind, param, url, mime=_data_url_mime(url), filename="")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise InvalidRequest(f"{field} is not a valid URL (its host or port cannot be read).",
                             param=param, code="invalid_media_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = parts.scheme or url[:20]
        raise InvalidRequest(
            f"{field} must be an http(s) URL or a data URL, not '{echo(shown)}'.",
            param=param, code="invalid_media_url",
        )
    name = posixpath.basename(urllib.parse.unquote(parts.path))
    return MediaPart(kind, param, url, mime="", filename=name)


def _audio_part(value: Any, param: str) -> MediaPart:
    if not isinstance(value, Mapping) or not isinstance(value.get("data"), str):
        raise InvalidRequest(f"{param}.input_audio must be an object with base64 'data' and a 'format'.", param=param)
    fmt = str(value.get("format") or "").lower()
    mime = _AUDIO_FORMATS.get(fmt)
    if not mime:
        usable = ", ".join(f for f, m in _AUDIO_FORMATS.items() if m)
        raise InvalidRequest(
            f"{param}.input_audio.format '{echo(fmt)}' is not supported; use one of {usable} (raw PCM is not).",
            param=param, code="unsupported_media_type",
        )
    return MediaPart("audio", param, value["data"], mime=mime, filename=f"audio.{_EXTENSIONS[mime]}")


def _file_part(value: Any, param: str) -> MediaPart:
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{param}.file must be an object with 'file_data' and 'filename'.", param=param)
    if value.get("file_id") and not value.get("file_data"):
        raise InvalidRequest(
            f"{param}.file.file_id: uploaded OpenAI files are not supported; send the content as 'file_data'.",
            param=param, code="unsupported_content",
        )
    data = value.get("file_data")
    if not isinstance(data, str) or not data:
        raise InvalidRequest(f"{param}.file.file_data must be base64 or a data URL.", param=param)
    filename = safe_filename(str(value.get("filename") or ""))
    mime = _data_url_mime(data) if data.startswith("data:") else ""
    if mime in GENERIC_TYPES:
        mime = mime_for_filename(filename)
    kind = kind_of(mime) or "document"
    return MediaPart(kind, param, data, mime=mime, filename=filename)


# --------------------------------------------------------------------------- bytes


def decode_inline(part: MediaPart) -> MediaPart:
    """Decode a data URL or bare base64 part into bytes, with its type checked and its size limited."""
    if part.data is not None or part.remote:
        return part
    if part.source.startswith("data:"):
        data = _data_url_bytes(part.source, part.param)
    else:
        data = _b64decode(part.source, part.param)
    return with_bytes(part, data, part.mime)


def with_bytes(part: MediaPart, data: bytes, content_type: str) -> MediaPart:
    """The part with its bytes: the type settled (declared, else sniffed), the kind and size checked."""
    mime = normalise_mime(content_type)
    if mime in GENERIC_TYPES:  # only an unlabelled body is identified by its bytes or its name
        mime = sniff(data) or mime_for_filename(part.filename)
    kind = kind_of(mime) or ("document" if is_document(mime) else None)
    if kind != part.kind and not (part.kind == "document" and kind):
        what = mime or "unknown data"
        raise InvalidRequest(
            f"{part.param}: expected {_article(part.kind)} but got {echo(what)}.",
            param=part.param, code="unsupported_media_type",
        )
    if kind == "image" and data and not looks_like_image(data):
        raise InvalidRequest(
            f"{part.param}: the data is labelled {echo(mime)} but is not a picture (PNG, JPEG, GIF, WebP, BMP, TIFF "
            "or HEIC bytes were expected).", param=part.param, code="unsupported_media_type",
        )
    limit = MAX_BYTES[kind]
    if len(data) > limit:
        raise InvalidRequest(
            f"{part.param}: the {kind} is {len(data) / MB:.1f} MB; the site takes at most {limit // MB} MB per {kind}.",
            param=part.param, code="media_too_large",
        )
    if not data:
        raise InvalidRequest(f"{part.param}: the {part.kind} is empty.", param=part.param)
    filename = with_extension(part.filename or kind, mime)
    return dataclasses.replace(part, kind=kind, data=data, mime=mime, filename=filename)


def _data_url_mime(url: str) -> str:
    header = url[5:].partition(",")[0]
    return normalise_mime(header.split(";")[0])


def _data_url_bytes(url: str, param: str) -> bytes:
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise InvalidRequest(f"{param}: malformed data URL (no comma before the data).", param=param)
    if "base64" in (p.strip().lower() for p in header.split(";")[1:]):
        return _b64decode(payload, param)
    return urllib.parse.unquote_to_bytes(payload)


def _b64decode(text: str, param: str) -> bytes:
    compact = "".join(text.split())  # line breaks some encoders add; str.split is ~50x faster than a regex here
    compact += "=" * (-len(compact) % 4)
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact)
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{param}: the data is not valid base64.", param=param) from None


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"), (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"),
    (b"%PDF-", "application/pdf"), (b"ID3", "audio/mpeg"), (b"fLaC", "audio/flac"), (b"OggS", "audio/ogg"),
    (b"\x1aE\xdf\xa3", "video/webm"), (b"#!AMR", "audio/amr"),
)


def sniff(data: bytes) -> str:
    """The type the first bytes prove, or ``""``: for data sent as ``application/octet-stream``."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] in (b"WEBP", b"WAVE", b"AVI "):
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}[data[8:12]]
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"mif1"):
            return "image/heic"
        return "audio/mp4" if brand in (b"M4A ", b"M4B ") else "video/quicktime" if brand == b"qt  " else "video/mp4"
    if data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    return ""


def looks_like_image(data: bytes) -> bool:
    """Whether the first bytes are those of a picture format the site takes (a label alone proves nothing)."""
    return sniff(data).startswith("image/") or (data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS)


_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif")


# --------------------------------------------------------------------------- types and names


def normalise_mime(content_type: str) -> str:
    mime = content_type.split(";")[0].strip().lower()
    return _ALIASES.get(mime, mime)


def kind_of(mime: str) -> str | None:
    """image, audio or video for a media type the site takes; None for anything else."""
    major = mime.split("/")[0]
    if major in ("image", "audio", "video") and mime in _EXTENSIONS:
        return major
    return None


def is_document(mime: str) -> bool:
    return mime.startswith("text/") or (mime in _EXTENSIONS and kind_of(mime) is None)


def mime_for_filename(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return _BY_EXTENSION.get(ext, "")


def safe_filename(name: str, limit: int = 100) -> str:
    """A name the site can put in an object path: no directories, no control characters, not too long."""
    name = posixpath.basename(name.replace("\\", "/"))
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip().strip(".")
    if len(name) > limit:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: limit - len(ext) - 1] + dot + ext) if dot and len(ext) <= 8 else name[:limit]
    return name


def with_extension(filename: str, mime: str) -> str:
    """``filename`` made safe, with the extension of ``mime`` when it has none the site would recognise."""
    name = safe_filename(filename) or "file"
    ext = _EXTENSIONS.get(mime)
    if ext and mime_for_filename(name) != mime:
        name = f"{name}.{ext}"
    return name


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


# --------------------------------------------------------------------------- turns


def place_media(
    messages: Sequence[tuple[str, str, tuple[MediaPart, ...]]],
) -> tuple[tuple[tuple[str, str], ...], tuple[MediaPart, ...]]:
    """Which media are sent: those of the newest user message. Others become ``[earlier image: x.png]``.

    The site takes one message per turn, so media cannot stay attached to the
    history; uploading every old image again would cost a grant each (20 per
    window) and the model rarely needs them. The placeholder keeps the history
    honest about what was there.
    """
    newest = max((i for i, (role, _, _) in enumerate(messages) if role == "user"), default=-1)
    flat: list[tuple[str, str]] = []
    for i, (role, text, parts) in enumerate(messages):
        if parts and i != newest:
            text = "\n".join(filter(None, [text, *(placeholder(p) for p in parts)]))
        flat.append((role, text))
    return tuple(flat), (messages[newest][2] if newest >= 0 else ())


def placeholder(part: MediaPart) -> str:
    name = safe_filename(part.filename)
    return f"[earlier {part.kind}{': ' + name if name else ''}]"


def check_turn(parts: Sequence[MediaPart]) -> None:
    """The site's per-turn limits: how many of each kind, and which kinds may share a turn (§7.4, §7.6)."""
    kinds = [p.kind for p in parts]
    for kind, most in MAX_COUNT.items():
        if kinds.count(kind) > most:
            raise InvalidRequest(
                f"The last user message has {kinds.count(kind)} {kind}s; the site takes at most {most} per message.",
                param="messages", code="too_many_media",
            )
    distinct = set(kinds)
    if len(distinct) > 1 and not distinct <= MIXABLE:
        raise InvalidRequest(
            f"The last user message mixes {', '.join(sorted(distinct))}; the site takes audio or video alone "
            "(images and documents may go together). Send them in separate requests.",
            param="messages", code="mixed_media",
        )


def file_entry(
    part: MediaPart, *, file_id: str, url: str, task_id: str, now_ms: int, parsed: bool = False
) -> dict[str, Any]:
    """The ``messages[0].files[]`` entry for an uploaded part, as the web app sends it (§7.4)."""
    size = len(part.data or b"")
    kind = FILE_TYPE[part.kind]
    meta: dict[str, Any] = {"name": part.filename, "size": size, "content_type": part.mime}
    if parsed:
        meta["parse_meta"] = {"parse_status": "success"}
    entry: dict[str, Any] = {
        "type": kind,
        "file": {"created_at": now_ms, "data": {}, "filename": part.filename, "hash": None, "id": file_id,
                 "meta": meta, "update_at": now_ms},
        "id": file_id, "url": url, "name": part.filename, "collection_name": "", "progress": 100,
        "status": "uploaded", "greenNet": "success", "size": size, "error": "", "itemId": file_id,
        "file_type": part.mime, "showType": kind, "file_class": FILE_CLASS[part.kind], "uploadTaskId": task_id,
    }
    if parsed:
        entry["context"] = "full"
    return entry
