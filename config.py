"""Settings: defaults, then ``config.json``, then the environment, validated once.

Every key has the same name in ``config.json`` and in the environment (``PORT``
may also be spelled ``SERVER_PORT`` in the file, as older configs do). A bad
value raises ``ConfigError`` with one line naming the key, so start-up stops
with a message instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: The service's version, shown at ``/`` and ``/health``.
__version__ = "0.1.0"
logger = logging.getLogger(__name__)

BASE_DIR = Path(__file__).resolve().parent
ACCOUNT_SEPARATOR = "|||"


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated, immutable configuration of one proxy instance."""

    #: The keys callers may use; an entry may be named, ``alice:sk-…``, to count usage per name.
    API_KEY: tuple[str, ...] = ()
    #: Each API_KEY's name for usage figures (set from API_KEY; an unnamed key gets a masked prefix of itself).
    API_KEY_NAMES: tuple[str, ...] = ()
    QWEN_TOKEN: tuple[str, ...] = ()
    COOKIE: tuple[str, ...] = ()
    SERVER_MODE: bool = True
    DEBUG_MODE: bool = False
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    VISION_FALLBACK_MODEL: str = ""
    AUTO_REFRESH_TOKEN: bool = True
    TOKEN_REFRESH_INTERVAL_HOURS: float = 6.0
    QWEN_BASE_URL: str = "https://chat.qwen.ai"
    CONFIG_FILE: str = str(BASE_DIR / "config.json")
    COOKIE_FILE: str = str(BASE_DIR / "cookie.txt")
    #: Model that OpenAI names such as ``gpt-4o`` map to; empty = the site's first model.
    DEFAULT_MODEL: str = ""
    #: Anthropic model names → Qwen model ids, for /v1/messages (Claude Code): shell-style patterns, first match
    #: wins, e.g. {"claude-opus-*": "qwen3.8-max", "claude-haiku-*": "qwen3.7-plus-fast"}. Claude names that no
    #: pattern matches run on DEFAULT_MODEL; other names are taken as Qwen ids.
    ANTHROPIC_MODEL_MAP: tuple[tuple[str, str], ...] = ()
    #: The site takes one message per turn; older history beyond this is dropped.
    MAX_HISTORY_MESSAGES: int = 60
    MAX_REQUEST_MB: float = 20.0
    #: Browser-like header values; the site changes them, so they are settings.
    QWEN_VERSION: str = "0.2.83"
    QWEN_USER_AGENT: str = (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/140.0.0.0 Safari/537.36"
    )
    QWEN_BX_V: str = "2.5.36"
    #: The Chrome brand list matching QWEN_USER_AGENT, and the browser's languages.
    QWEN_SEC_CH_UA: str = '"Chromium";v="140", "Not=A?Brand";v="24", "Google Chrome";v="140"'
    QWEN_ACCEPT_LANGUAGE: str = "en-US,en;q=0.9"
    #: The anti-bot fingerprint headers of a real browser session (§1.2), sent only when set.
    QWEN_BX_UA: str = ""
    QWEN_BX_UMIDTOKEN: str = ""
    #: Also send ``Authorization: Bearer``; the web app authenticates on the cookie alone (§14, front-end 0.2.81).
    QWEN_SEND_BEARER: bool = False
    CONNECT_TIMEOUT: float = 10.0
    #: Longest silence tolerated between two bytes of an answer (thinking can be quiet 50 s+).
    READ_TIMEOUT: float = 180.0
    MODELS_CACHE_TTL: float = 3600.0
    #: Connections kept per account; unset, it follows MAX_CONCURRENT_REQUESTS (every request may stream).
    UPSTREAM_POOL_SIZE: int = 1000
    #: Requests one process serves at once; above it, 429 with Retry-After (gunicorn.conf.py sizes
    #: worker_connections from it). /health is never counted.
    MAX_CONCURRENT_REQUESTS: int = 1000
    #: Seconds of upstream silence after which a stream gets a ``: ping`` comment; also the longest
    #: wait for the first output before a stream is committed to HTTP 200.
    PING_INTERVAL_SECONDS: float = 15.0
    #: The auth host of the newest sign-in scheme, which renews tokens from a ``refresh_token`` cookie.
    QWEN_AUTH_URL: str = "https://auth.qwen.ai"
    QWEN_AUTH_VERSION: str = "0.3.12"
    #: Renewed tokens are kept here across restarts (never in config.json or cookie.txt); empty = off.
    TOKEN_STORE_FILE: str = str(BASE_DIR / "data" / "tokens.json")
    TOKEN_REFRESH_MARGIN_MINUTES: float = 60.0
    #: State every worker shares (accounts, tokens, conversations, uploads, counters): one SQLite file in
    #: the data directory; empty = each process keeps its own in memory (one process only).
    STATE_FILE: str = str(BASE_DIR / "data" / "state.sqlite3")
    #: ``redis://host:6379/0``: keep the shared state in Redis instead, for several hosts.
    REDIS_URL: str = ""
    #: ``GET /metrics`` wants ``Authorization: Bearer <METRICS_KEY>`` when set (open otherwise).
    METRICS_KEY: str = ""
    #: MAX_CONCURRENT_REQUESTS and ACCOUNT_MAX_CONCURRENCY count across all workers and hosts, not per process.
    GLOBAL_LIMITS: bool = False
    #: A worker that stops renewing its lease this long (killed, host gone) has its places in the shared
    #: counts given back by a live one; its heartbeat beats six times per lease.
    WORKER_LEASE_SECONDS: float = 30.0
    TOKEN_REFRESH_CHECK_SECONDS: float = 60.0
    #: Pool: consecutive failures before an account is taken out, and its first cool-down.
    POOL_FAILURE_THRESHOLD: int = 3
    POOL_COOLDOWN_SECONDS: float = 60.0
    POOL_MAX_COOLDOWN_SECONDS: float = 1800.0
    #: Other accounts tried for one turn when it fails before any output.
    FAILOVER_RETRIES: int = 2
    #: Turns at once per account (0 = no limit) and how long a turn waits for a free one.
    ACCOUNT_MAX_CONCURRENCY: int = 0
    ACCOUNT_QUEUE_TIMEOUT: float = 30.0
    #: Where upload PUTs go, path-style (``<endpoint>/<bucket>/<path>``); empty = the STS answer's endpoint.
    QWEN_OSS_ENDPOINT: str = ""
    #: Let image/video URLs point at loopback, private, link-local or metadata addresses (tests, trusted LANs).
    ALLOW_PRIVATE_URLS: bool = False
    #: Send only the new messages into the upstream chat a request continues (§10).
    CONTINUE_CHATS: bool = True
    #: Seconds a conversation stays continuable after its last turn; then its chat is deleted.
    CHAT_TTL: float = 3600.0
    #: Conversations remembered at most (the oldest are forgotten, and their chats deleted, first).
    MAX_CONVERSATIONS: int = 1000
    #: Delete the upstream chats this proxy created once they are no longer needed.
    DELETE_CHATS: bool = True
    #: Make a new conversation's chat ahead of need, one per account, model and chat type in use (§4): its
    #: first byte then waits for one call to the site instead of two. Off when DELETE_CHATS is off.
    SPARE_CHATS: bool = True
    #: Largest turn body sent to the site, in bytes of UTF-8 as sent: the site answers bodies of about
    #: 128 KB with a captcha (§11, §14); 112 KiB leaves a margin. Longer context goes as a document.
    MAX_TURN_BYTES: int = 114_688
    #: Deprecated (the site counts bytes, not characters): an extra cap in characters; 0 = off.
    MAX_TURN_CHARS: int = 0
    #: Send context that would make a turn too long as an uploaded text document instead (§7.3).
    OFFLOAD_CONTEXT: bool = True
    #: Hosts generated images and videos may be downloaded from, besides QWEN_BASE_URL's (§1.1).
    MEDIA_HOSTS: tuple[str, ...] = ("cdn.qwenlm.ai",)
    #: Largest generated file the proxy downloads (b64_json images, relayed videos).
    MEDIA_MAX_MB: float = 50.0
    MEDIA_DOWNLOAD_TIMEOUT: float = 60.0
    #: Pause between read-backs of a generated result, and between fetches of a file the CDN does not serve yet.
    MEDIA_RETRY_DELAY: float = 0.8
    VIDEO_POLL_INTERVAL: float = 10.0
    #: Give up on a video task after this long (measured: 93-343 s per clip).
    VIDEO_TIMEOUT: float = 900.0
    #: How long a non-stream chat request waits for its video before answering with the id to poll;
    #: below the usual 60 s idle limit of proxies and CDNs in front of this service.
    VIDEO_SYNC_WAIT: float = 50.0
    #: Everything the service writes (the state store, the token mirror) lives here unless set apart.
    DATA_DIR: str = str(BASE_DIR / "data")
    #: Bearer key of the admin API (/admin/api/...); empty = no admin API at all.
    ADMIN_KEY: str = ""

    @property
    def max_request_bytes(self) -> int:
        return int(self.MAX_REQUEST_MB * 1024 * 1024)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _parse_list(separator: str) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        items = value if isinstance(value, (list, tuple)) else str(value).split(separator)
        return tuple(dict.fromkeys(s for s in (str(i).strip() for i in items) if s))

    return parse


def _positive(kind: type) -> Callable[[Any], Any]:
    expected = "a whole number" if kind is int else "a number"

    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected {expected}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {expected}") from None
        if number <= 0:
            raise ValueError("must be greater than 0")
        return number

    return parse


def _non_negative(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("expected a whole number") from None
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _non_negative_number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _model_map(value: Any) -> tuple[tuple[str, str], ...]:
    """A JSON object (config.json, or its text), or ``pattern=model,pattern=model`` (the environment)."""
    if isinstance(value, str) and value.strip().startswith("{"):
        value = json.loads(value)
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        pairs = [item.split("=", 1) if "=" in item else [item, None] for item in _parse_list(",")(value)]
    if not all(isinstance(k, str) and k.strip() and isinstance(v, str) for k, v in pairs):
        raise ValueError('expected {"pattern": "qwen-model-id", ...} or pattern=model,pattern=model')
    return tuple((k.strip(), v.strip()) for k, v in pairs)


def _hosts(value: Any) -> tuple[str, ...]:
    return tuple(h.lower() for h in _parse_list(",")(value))


def _port(value: Any) -> int:
    port = _positive(int)(value)
    if port > 65535:
        raise ValueError("must be a port between 1 and 65535")
    return port


def _base_url(value: Any) -> str:
    url = str(value).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return url


def _header_value(value: Any) -> str:
    """A header value sent to the site: printable ASCII on one line, as a browser sends it."""
    text = str(value).strip()
    if not text or not all(" " <= ch <= "~" for ch in text):
        raise ValueError("must be a non-empty line of printable ASCII (it is sent as an HTTP header)")
    return text


def _optional_header_value(value: Any) -> str:
    return _header_value(value) if str(value).strip() else ""


def _optional_base_url(value: Any) -> str:
    return _base_url(value) if str(value).strip() else ""


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "API_KEY": _parse_list(","),
    "QWEN_TOKEN": _parse_list(ACCOUNT_SEPARATOR),
    "COOKIE": _parse_list(ACCOUNT_SEPARATOR),
    "SERVER_MODE": _parse_bool,
    "DEBUG_MODE": _parse_bool,
    "AUTO_REFRESH_TOKEN": _parse_bool,
    "PORT": _port,
    "TOKEN_REFRESH_INTERVAL_HOURS": _positive(float),
    "QWEN_BASE_URL": _base_url,
    "MAX_HISTORY_MESSAGES": _positive(int),
    "ANTHROPIC_MODEL_MAP": _model_map,
    "MAX_REQUEST_MB": _positive(float),
    "CONNECT_TIMEOUT": _positive(float),
    "READ_TIMEOUT": _positive(float),
    "MODELS_CACHE_TTL": _positive(float),
    "UPSTREAM_POOL_SIZE": _positive(int),
    "MAX_CONCURRENT_REQUESTS": _positive(int),
    "PING_INTERVAL_SECONDS": _positive(float),
    "QWEN_AUTH_URL": _base_url,
    **{key: _header_value for key in ("QWEN_VERSION", "QWEN_USER_AGENT", "QWEN_BX_V", "QWEN_SEC_CH_UA",
                                      "QWEN_ACCEPT_LANGUAGE", "QWEN_AUTH_VERSION")},
    "QWEN_SEND_BEARER": _parse_bool,
    "QWEN_BX_UA": _optional_header_value,
    "QWEN_BX_UMIDTOKEN": _optional_header_value,
    "TOKEN_REFRESH_MARGIN_MINUTES": _positive(float),
    "GLOBAL_LIMITS": _parse_bool,
    "WORKER_LEASE_SECONDS": _positive(float),
    "TOKEN_REFRESH_CHECK_SECONDS": _positive(float),
    "POOL_FAILURE_THRESHOLD": _positive(int),
    "POOL_COOLDOWN_SECONDS": _positive(float),
    "POOL_MAX_COOLDOWN_SECONDS": _positive(float),
    "FAILOVER_RETRIES": _non_negative,
    "ACCOUNT_MAX_CONCURRENCY": _non_negative,
    "ACCOUNT_QUEUE_TIMEOUT": _positive(float),
    "QWEN_OSS_ENDPOINT": _optional_base_url,
    "ALLOW_PRIVATE_URLS": _parse_bool,
    "CONTINUE_CHATS": _parse_bool,
    "CHAT_TTL": _positive(float),
    "MAX_CONVERSATIONS": _positive(int),
    "DELETE_CHATS": _parse_bool,
    "SPARE_CHATS": _parse_bool,
    "MAX_TURN_BYTES": _positive(int),
    "MAX_TURN_CHARS": _non_negative,
    "OFFLOAD_CONTEXT": _parse_bool,
    "MEDIA_HOSTS": _hosts,
    "MEDIA_MAX_MB": _positive(float),
    "MEDIA_DOWNLOAD_TIMEOUT": _positive(float),
    "MEDIA_RETRY_DELAY": _non_negative_number,
    "VIDEO_POLL_INTERVAL": _positive(float),
    "VIDEO_TIMEOUT": _positive(float),
    "VIDEO_SYNC_WAIT": _non_negative_number,
}
_KEYS = {f.name for f in dataclasses.fields(Settings)}


def _read_config_file(path: str) -> dict[str, Any]:
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"CONFIG_FILE {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"CONFIG_FILE {path}: must hold a JSON object")
    if "SERVER_PORT" in data and "PORT" not in data:
        data["PORT"] = data.pop("SERVER_PORT")
    for key in data:
        if key not in _KEYS and not key.startswith("_"):
            logger.warning("config file %s: ignoring unknown key %s", path, key)
    return {k: v for k, v in data.items() if k in _KEYS}


def read_cookie_file(path: str) -> tuple[str, ...]:
    """One browser cookie per line; blank lines and ``#`` comments are skipped."""
    if not path or not os.path.exists(path):
        return ()
    with open(path, encoding="utf-8") as fh:
        lines = (line.strip() for line in fh)
        return tuple(line for line in lines if line and not line.startswith("#"))


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build validated settings from defaults, the config file, the environment and overrides.

    ``overrides`` (used by tests and embedders) win over everything else.
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    config_file = overrides.get("CONFIG_FILE", environ.get("CONFIG_FILE", Settings.CONFIG_FILE))
    raw: dict[str, Any] = {"CONFIG_FILE": config_file}
    raw.update(_read_config_file(config_file))
    raw.update({k: v for k, v in environ.items() if k in _KEYS})
    raw.update(overrides)

    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _KEYS:
            raise ConfigError(f"unknown setting {key}")
        parse = _PARSERS.get(key, lambda v: str(v).strip())
        try:
            values[key] = parse(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}: {exc} (got {_describe(value)})") from None
    values.setdefault("UPSTREAM_POOL_SIZE", values.get("MAX_CONCURRENT_REQUESTS", Settings.MAX_CONCURRENT_REQUESTS))
    data_dir = values.get("DATA_DIR") or Settings.DATA_DIR  # the files the service writes default to inside it
    values.setdefault("TOKEN_STORE_FILE", os.path.join(data_dir, "tokens.json"))
    values.setdefault("STATE_FILE", os.path.join(data_dir, "state.sqlite3"))
    settings = Settings(**values)
    if settings.MAX_TURN_CHARS:
        logger.warning("MAX_TURN_CHARS is deprecated: the site's size rule counts bytes; set MAX_TURN_BYTES "
                       "(default %d) instead", Settings.MAX_TURN_BYTES)
    cookies = settings.COOKIE + read_cookie_file(settings.COOKIE_FILE)
    keys, names = split_api_keys(settings.API_KEY)
    return dataclasses.replace(settings, COOKIE=tuple(dict.fromkeys(cookies)), API_KEY=keys, API_KEY_NAMES=names)


#: A key's name in ``name:key``: short and plain, so it can be a label in /metrics.
_KEY_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,32}")


def split_api_keys(entries: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``alice:sk-…`` entries into the keys and their names; a plain key is named by a short masked prefix.

    Only a plain name before the first colon makes an entry named, so a key that
    itself holds a colon after other characters stays whole.
    """
    keys: dict[str, str] = {}
    for entry in entries:
        name, sep, key = entry.partition(":")
        if not (sep and key.strip() and _KEY_NAME.fullmatch(name.strip())):
            name, key = "", entry
        key = key.strip()
        keys.setdefault(key, name.strip() or unnamed_key_label(key))
    return tuple(keys), tuple(keys.values())


def unnamed_key_label(key: str) -> str:
    """A masked prefix that tells keys apart in usage figures: a third of the key at most, 6 characters."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key[:min(6, len(key) // 3)]) + "…"


def _describe(value: Any) -> str:
    """Show a bad value without echoing what may be a secret."""
    text = str(value)
    return repr(text) if len(text) <= 16 else f"{len(text)} characters"
