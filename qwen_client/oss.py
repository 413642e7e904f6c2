"""Aliyun OSS V4 request signing (``OSS4-HMAC-SHA256``), as the site's web app signs its uploads (§7.2).

Pure functions, no I/O and no clock: the time is passed in, so the signature
of a request is a value that tests compare with Aliyun's own ``oss2`` SDK.
Signed by hand rather than with ``oss2``: the PUT needs ~40 lines, while the
SDK would bring crcmod, pycryptodome and two aliyun-python-sdk packages into
the runtime. Section numbers refer to ``qwen-web-protocol.md``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping

ALGORITHM = "OSS4-HMAC-SHA256"
PRODUCT = "oss"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: Headers V4 signs besides every ``x-oss-*`` one.
_SIGNED_PLAIN_HEADERS = frozenset({"content-type", "content-md5"})


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Temporary STS credentials, as ``getstsToken`` hands them out for one object."""

    access_key_id: str
    access_key_secret: str
    security_token: str = ""

    def __repr__(self) -> str:  # never print the secret or the token
        return f"Credentials(access_key_id={self.access_key_id!r}, ...)"


def uri_encode(text: str, keep_slash: bool) -> str:
    """OSS's percent-encoding: everything but unreserved characters (and ``/`` in paths), hex upper case."""
    return urllib.parse.quote(text, safe="/" if keep_slash else "")


def scope_region(region: str) -> str:
    """The region as the V4 scope wants it: the STS answer's ``oss-ap-southeast-1`` is ``ap-southeast-1``."""
    return region[4:] if region.startswith("oss-") else region


def signing_key(secret: str, date: str, region: str) -> bytes:
    """``HMAC("aliyun_v4" + secret, date) → region → "oss" → "aliyun_v4_request"``."""
    key = ("aliyun_v4" + secret).encode()
    for part in (date, region, PRODUCT, "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def canonical_request(
    method: str, bucket: str, key: str, headers: Mapping[str, str], query: Mapping[str, str] | None = None
) -> str:
    """Method, ``/<bucket>/<key>``, sorted query, signed headers, (no additional headers), payload hash."""
    lowered = {k.lower(): str(v).strip() for k, v in headers.items()}
    signed = sorted(k for k in lowered if k.startswith("x-oss-") or k in _SIGNED_PLAIN_HEADERS)
    pairs = sorted((uri_encode(k, False), uri_encode(v, False)) for k, v in (query or {}).items())
    return "\n".join([
        method.upper(),
        uri_encode(f"/{bucket}/{key}", True),
        "&".join(f"{k}={v}" if v else k for k, v in pairs),
        "".join(f"{k}:{lowered[k]}\n" for k in signed),
        "",
        lowered.get("x-oss-content-sha256", UNSIGNED_PAYLOAD),
    ])


def sign_headers(
    method: str,
    bucket: str,
    key: str,
    headers: Mapping[str, str],
    credentials: Credentials,
    region: str,
    now: dt.datetime,
) -> dict[str, str]:
    """``headers`` plus the date, payload, token and ``Authorization`` headers of a V4-signed request."""
    date_time = now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = dict(headers)
    out["x-oss-date"] = date_time
    out["x-oss-content-sha256"] = UNSIGNED_PAYLOAD
    if credentials.security_token:
        out["x-oss-security-token"] = credentials.security_token
    scope = f"{date_time[:8]}/{scope_region(region)}/{PRODUCT}/aliyun_v4_request"
    digest = hashlib.sha256(canonical_request(method, bucket, key, out).encode()).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{date_time}\n{scope}\n{digest}"
    key_bytes = signing_key(credentials.access_key_secret, date_time[:8], scope_region(region))
    signature = hmac.new(key_bytes, string_to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, Signature={signature}"
    return out


def object_url(bucket: str, key: str, endpoint: str, path_style: bool = False) -> str:
    """Where an object lives: ``https://<bucket>.<endpoint>/<key>``, or ``<endpoint>/<bucket>/<key>`` path-style.

    ``endpoint`` may carry a scheme (``http://127.0.0.1:9000``); without one, HTTPS.
    """
    endpoint = endpoint.strip().rstrip("/")
    scheme, _, host = endpoint.rpartition("://")
    scheme = scheme or "https"
    path = uri_encode(key, True)
    if path_style:
        return f"{scheme}://{host}/{uri_encode(bucket, False)}/{path}"
    return f"{scheme}://{bucket}.{host}/{path}"
