"""Bounded downloads of generated images and videos from the site's CDN hosts.

Apart from ``qwen_client.client`` because nothing here speaks the site's API: no
account, no browser headers, no refusal classifier. What it guards is what any
fetch of a URL taken from an answer needs: the host must be one of the site's
(the URL came from the network, so it is not trusted to point anywhere else),
redirects are re-checked, and the body has a size cap and a deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from urllib.parse import urljoin, urlsplit

import requests

from errors import ProxyError, ServiceUnavailable, UpstreamError, UpstreamTimeout
from transform.generation import allowed_download_url, sniff_output_type

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
CHUNK = 64 * 1024


class CdnFetcher:
    """Downloads from an allow-list of hosts, with one session of its own (the CDN links are signed)."""

    def __init__(self, hosts: Sequence[str], connect_timeout: float, session: requests.Session) -> None:
        self.hosts = tuple(h for h in hosts if h)
        self.connect_timeout = connect_timeout
        self.session = session

    def open(self, url: str, timeout: float, proxies: dict[str, str] | None = None) -> requests.Response:
        """A streamed GET; redirects are followed only while they stay on allowed hosts.

        ``proxies``: the account's own proxy, which every call of that account takes.
        """
        for _ in range(MAX_REDIRECTS + 1):
            if not allowed_download_url(url, self.hosts):
                host = urlsplit(url).hostname or "an unknown host"
                raise UpstreamError(
                    f"Refusing to download generated media from {host}: not a host of the site "
                    "(MEDIA_HOSTS). Ask for response_format 'url' instead, or add the host.",
                    code="media_host_refused", retryable=False)
            try:
                resp = self.session.get(url, stream=True, allow_redirects=False,
                                        timeout=(self.connect_timeout, timeout), proxies=proxies)
            except requests.RequestException as exc:
                raise _fetch_error(exc) from None
            if not resp.is_redirect:
                return resp
            url = urljoin(url, resp.headers.get("Location", ""))
            resp.close()
        raise UpstreamError("The site's CDN redirected too many times.", code="media_unavailable")

    def stream(self, url: str, max_bytes: int, timeout: float, tries: int, delay: float,
               proxies: dict[str, str] | None = None) -> tuple[str, Iterator[bytes]]:
        """The media type and the body (capped, closed at its end) of a generated file.

        Right after generation the CDN may answer a small 404 HTML page for a
        while (§8.1), so a body counts only when its first bytes say it is an
        image or a video; until then it is fetched again, ``tries`` times.
        """
        deadline = time.monotonic() + timeout
        said = ""
        for attempt in range(tries):
            if attempt:
                time.sleep(delay)
            resp = self.open(url, timeout, proxies)
            said = f"HTTP {resp.status_code}"
            if resp.status_code == 200:
                chunks = iter_capped(resp, max_bytes, deadline)
                try:
                    first = next(chunks, b"")
                except ProxyError:
                    resp.close()
                    raise
                media_type = sniff_output_type(first[:16])
                if media_type:
                    return media_type, _body(first, chunks, resp)
                said = "not an image or a video"
            resp.close()
            logger.info("generated file not ready (%s), attempt %d of %d", said, attempt + 1, tries)
        raise UpstreamError(f"The site's CDN did not serve the generated file ({said}). Retry, or ask for "
                            "response_format 'url'.", code="media_unavailable")

    def download(self, url: str, max_bytes: int, timeout: float, tries: int, delay: float,
                 proxies: dict[str, str] | None = None) -> tuple[bytes, str]:
        """The whole generated file and its media type (see ``stream``)."""
        media_type, body = self.stream(url, max_bytes, timeout, tries, delay, proxies)
        return b"".join(body), media_type


def _body(first: bytes, rest: Iterator[bytes], resp: requests.Response) -> Iterator[bytes]:
    try:
        yield first
        yield from rest
    finally:
        resp.close()


def iter_capped(resp: requests.Response, max_bytes: int, deadline: float) -> Iterator[bytes]:
    """The body in chunks, stopped with an error past ``max_bytes`` or after ``deadline``."""
    size = 0
    try:
        for chunk in resp.iter_content(chunk_size=CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise UpstreamError(f"The generated file is larger than {max_bytes / 1048576:g} MiB "
                                    "(MEDIA_MAX_MB).", code="media_too_large", retryable=False)
            if time.monotonic() > deadline:
                raise UpstreamTimeout("Downloading the generated file took too long (MEDIA_DOWNLOAD_TIMEOUT).")
            yield chunk
    except requests.RequestException as exc:
        raise _fetch_error(exc) from None


def _fetch_error(exc: requests.RequestException) -> ProxyError:
    if isinstance(exc, requests.Timeout):
        return UpstreamTimeout("The site's CDN did not answer in time (MEDIA_DOWNLOAD_TIMEOUT). Retry.")
    if isinstance(exc, requests.ConnectionError):
        return ServiceUnavailable("Could not reach the site's CDN to fetch the generated file. Retry.",
                                  retry_after=10.0)
    return UpstreamError(f"Fetching the generated file failed ({type(exc).__name__}).", code="media_unavailable")
