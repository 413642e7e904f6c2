"""Fetching the image and video URLs clients send, without letting a request reach this server's own network.

A URL in a request is an instruction from a stranger to make this server send a
GET. So every hop is checked before it is made: the host is resolved, every
address it resolves to must be public (not loopback, private, link-local,
shared, reserved or a cloud metadata address) unless ``ALLOW_PRIVATE_URLS``,
and the connection goes to the address that was checked, never through a
second lookup a hostile DNS server could answer differently. Redirects are
followed by hand, at most ``MAX_REDIRECTS``, each one checked the same way.
Time, size and content type are bounded before the body is read.

It uses urllib3 directly (already under ``requests``) because ``requests``
cannot connect to a chosen address while keeping the host name for the Host
header and TLS; environment proxies are ignored for the same reason.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import time
import urllib.parse
from collections.abc import Callable

import certifi
import urllib3

from errors import InvalidRequest

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/unknown"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (gevent's resolver when monkey-patched)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast. This refuses 127/8, 10/8, 172.16/12, 192.168/16, 169.254/16 (cloud
    metadata), 100.64/10 (Alibaba Cloud's metadata at 100.100.100.200), ::1, fc00::/7, fe80::/10, and
    the same addresses wrapped as IPv4-mapped IPv6."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclasses.dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str
    url: str  # after redirects


class RemoteFetcher:
    """Downloads one URL for a content part, within the limits it is given."""

    MAX_REDIRECTS = 3

    def __init__(
        self,
        *,
        allow_private: bool = False,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        total_timeout: float = 60.0,
        user_agent: str = "qwen2openai",
        resolver: Resolver = resolve,
        is_allowed: Callable[[IPAddress], bool] = is_public,
    ) -> None:
        self.allow_private = allow_private
        self.connect_timeout, self.read_timeout, self.total_timeout = connect_timeout, read_timeout, total_timeout
        self.user_agent = user_agent
        self._resolve, self._is_allowed = resolver, is_allowed

    def fetch(self, url: str, *, expect: str, max_bytes: int, param: str) -> Fetched:
        """The body of ``url`` if it is ``expect``/* (or unlabelled) and at most ``max_bytes`` long."""
        deadline = time.monotonic() + self.total_timeout
        for _ in range(self.MAX_REDIRECTS + 1):
            resp, pool = self._open(url, deadline, param)
            try:
                location = resp.headers.get("Location")
                if resp.status in _REDIRECTS and location:
                    try:
                        url = urllib.parse.urljoin(url, location)
                    except ValueError:
                        raise _unreachable(param, "it redirected to a malformed URL") from None
                    continue
                if resp.status >= 400 or resp.status < 200:
                    raise _unreachable(param, f"it answered HTTP {resp.status}")
                content_type = resp.headers.get("Content-Type", "")
                _check_type(content_type, expect, param)
                data = _read(resp, max_bytes, deadline, param)
                logger.info("fetched %d bytes of %s for %s", len(data), content_type or "untyped data", param)
                return Fetched(data, content_type, url)
            except urllib3.exceptions.HTTPError as exc:
                raise _unreachable(param, _reason(exc)) from None
            finally:
                resp.close()
                pool.close()
        raise InvalidRequest(
            f"{param}: the URL redirected more than {self.MAX_REDIRECTS} times; send the final URL or the data itself.",
            param=param, code="media_url_unreachable",
        )

    def _open(
        self, url: str, deadline: float, param: str
    ) -> tuple[urllib3.BaseHTTPResponse, urllib3.HTTPConnectionPool]:
        """One GET, without following redirects, to an address of the host that passed the check."""
        try:  # urlsplit lowercases the scheme (HTTP:// works) and refuses a broken IPv6 host ("http://[::1")
            parts = urllib.parse.urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InvalidRequest(
                f"{param}: the URL is malformed (its host or port cannot be read).", param=param,
                code="invalid_media_url",
            ) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"{param}: only http(s) URLs can be fetched.", param=param, code="invalid_media_url")
        host = parts.hostname
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Host": parts.netloc.rpartition("@")[2], "User-Agent": self.user_agent,
                   "Accept": "*/*", "Accept-Encoding": "identity"}
        last: Exception | None = None
        for address in self.addresses(host, port, param):
            remaining = max(0.1, deadline - time.monotonic())
            timeout = urllib3.Timeout(
                connect=min(self.connect_timeout, remaining), read=min(self.read_timeout, remaining)
            )
            pool = self._pool(parts.scheme, address, port, host, timeout)
            try:
                resp = pool.urlopen("GET", target, headers=headers, redirect=False, retries=False,
                                    preload_content=False, assert_same_host=False)
                return resp, pool
            except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as exc:
                pool.close()
                last = exc  # try the host's next checked address
            except urllib3.exceptions.HTTPError as exc:
                pool.close()
                raise _unreachable(param, _reason(exc)) from None
        raise _unreachable(param, _reason(last) if last else "no address")

    def addresses(self, host: str, port: int, param: str) -> list[str]:
        """The host's addresses, refused as a whole if any is not public (a mixed answer is an attack)."""
        try:
            found = [ipaddress.ip_address(host)] if _is_ip(host) else [
                ipaddress.ip_address(a.split("%")[0]) for a in self._resolve(host, port)]
        except (OSError, UnicodeError, ValueError):
            raise _unreachable(param, f"the host {host!r} could not be resolved") from None
        if not found:
            raise _unreachable(param, f"the host {host!r} has no address")
        refused = [ip for ip in found if not self._is_allowed(ip)]
        if refused and not self.allow_private:
            raise InvalidRequest(
                f"{param}: the URL's host resolves to a loopback, private, link-local or metadata address "
                f"({refused[0]}), which this proxy does not fetch. Send the file inline as a data URL.",
                param=param, code="url_not_allowed",
            )
        return [str(ip) for ip in found]

    @staticmethod
    def _pool(scheme: str, address: str, port: int, host: str, timeout: urllib3.Timeout) -> urllib3.HTTPConnectionPool:
        if scheme == "https":
            return urllib3.HTTPSConnectionPool(
                address, port, timeout=timeout, maxsize=1, retries=False, server_hostname=host,
                assert_hostname=host, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where(),
            )
        return urllib3.HTTPConnectionPool(address, port, timeout=timeout, maxsize=1, retries=False)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_type(content_type: str, expect: str, param: str) -> None:
    mime = content_type.split(";")[0].strip().lower()
    if mime not in GENERIC_TYPES and mime.split("/")[0] != expect:
        raise InvalidRequest(
            f"{param}: the URL returned {mime}, not {'an' if expect[0] in 'aeiou' else 'a'} {expect}.",
            param=param, code="unsupported_media_type",
        )


def _read(resp: urllib3.BaseHTTPResponse, max_bytes: int, deadline: float, param: str) -> bytes:
    too_large = InvalidRequest(
        f"{param}: the file at the URL is larger than {max_bytes // (1024 * 1024)} MB, the most this proxy fetches.",
        param=param, code="media_too_large",
    )
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise too_large
    chunks, size = [], 0
    for chunk in resp.stream(65536):
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        if time.monotonic() > deadline:
            raise _unreachable(param, "it was too slow to send the file")
        chunks.append(chunk)
    return b"".join(chunks)


def _unreachable(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"{param}: could not fetch the URL ({why}). Check that it is public, or send the file inline as a data URL.",
        param=param, code="media_url_unreachable",
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # a subclass of ConnectTimeoutError
        return "connection refused or unreachable"
    if isinstance(exc, (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ReadTimeoutError)):
        return "timed out"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return "TLS certificate check failed"
    return type(exc).__name__
