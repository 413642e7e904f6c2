"""Upload pieces without the network: reading STS grants, OSS refusals, and the Uploader's reuse of uploads."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from errors import ServiceUnavailable, UpstreamError
from identity_pool import Identity
from qwen_client.uploads import Uploader
from qwen_client.wire import oss_error, parse_grant
from tests.fake_qwen import make_jwt

GRANT = {"access_key_id": "STS.ak", "access_key_secret": "sk", "security_token": "tok", "bucketname": "qwen-webui-prod",
         "region": "oss-ap-southeast-1", "endpoint": "oss-accelerate.aliyuncs.com",
         "file_path": "user-1/3f2e1d0c-aaaa_a.png", "file_url": "https://signed/url?x-oss-signature=1", "file_id": "3f2e1d0c-aaaa"}


@pytest.mark.parametrize("answer", [
    {"success": True, "request_id": "r", "data": GRANT},
    GRANT,
])
def test_both_grant_generations(answer):
    grant = parse_grant(answer)
    assert (grant.bucket, grant.region, grant.file_path, grant.file_id) == (
        "qwen-webui-prod", "oss-ap-southeast-1", "user-1/3f2e1d0c-aaaa_a.png", "3f2e1d0c-aaaa")
    assert grant.credentials.security_token == "tok" and grant.file_url == GRANT["file_url"]


def test_grant_without_optional_fields():
    grant = parse_grant({k: v for k, v in GRANT.items() if k not in ("file_id", "file_url", "endpoint")})
    assert grant.file_id == "3f2e1d0c-aaaa"
    assert grant.endpoint == "oss-ap-southeast-1.aliyuncs.com"
    assert grant.file_url == "https://qwen-webui-prod.oss-ap-southeast-1.aliyuncs.com/user-1/3f2e1d0c-aaaa_a.png"


@pytest.mark.parametrize("missing", ["access_key_id", "access_key_secret", "security_token", "bucketname", "region", "file_path"])
def test_grant_missing_a_field_is_an_error_not_a_dropped_file(missing):
    with pytest.raises(UpstreamError) as info:
        parse_grant({"success": True, "data": {k: v for k, v in GRANT.items() if k != missing}})
    assert missing in info.value.message and "not sent" in info.value.message


@pytest.mark.parametrize(("status", "body", "kind", "words"), [
    (403, "<Error><Code>SignatureDoesNotMatch</Code></Error>", UpstreamError, "SignatureDoesNotMatch"),
    (403, "<Error><Code>RequestTimeTooSkewed</Code></Error>", UpstreamError, "clock"),
    (404, "", UpstreamError, "HTTP 404"),
    (500, "<Error><Code>InternalError</Code></Error>", ServiceUnavailable, "InternalError"),
    (503, "<html>busy</html>", ServiceUnavailable, "HTTP 503"),
])
def test_oss_refusals(status, body, kind, words):
    error = oss_error(status, body)
    assert type(error) is kind and words in error.message and "<" not in error.message


class FakeClient:
    """Counts the site calls an Uploader makes; answers each grant with a new file id."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def sts_grant(self, identity: Identity, filename: str, size: int, filetype: str) -> Any:
        with self._lock:
            self.calls.append(("sts", filetype))
            n = len(self.calls)
        return parse_grant({**GRANT, "file_id": f"id-{n}", "file_path": f"u/id-{n}_{filename}"})

    def put_object(self, grant: Any, data: bytes, content_type: str, proxies: Any = None) -> None:
        self.calls.append(("put", content_type))

    def parse_file(self, identity: Identity, file_id: str, name: str) -> None:
        self.calls.append(("parse", file_id))


def account(user: str) -> Identity:
    return Identity(token=make_jwt(user))


def test_reuse_is_per_account_and_content():
    client = FakeClient()
    uploader = Uploader(client)  # type: ignore[arg-type]
    one, two = account("u1"), account("u2")
    first = uploader.upload(one, b"png", filename="a.png", content_type="image/png")
    assert uploader.upload(one, b"png", filename="a.png", content_type="image/png") == first
    assert uploader.upload(two, b"png", filename="a.png", content_type="image/png")["id"] != first["id"]
    assert uploader.upload(one, b"other", filename="a.png", content_type="image/png")["id"] != first["id"]
    assert [c for c in client.calls if c[0] == "sts"] == [("sts", "image")] * 3


def test_returned_entries_are_copies():
    uploader = Uploader(FakeClient())  # type: ignore[arg-type]
    entry = uploader.upload(account("u1"), b"x", filename="a.png", content_type="image/png")
    entry["url"] = "mutated"
    assert uploader.upload(account("u1"), b"x", filename="a.png", content_type="image/png")["url"] != "mutated"


def test_documents_are_parsed_and_kinds_come_from_the_type():
    client = FakeClient()
    uploader = Uploader(client)  # type: ignore[arg-type]
    entry = uploader.upload(account("u1"), b"%PDF", filename="a.pdf", content_type="application/pdf")
    uploader.upload(account("u1"), b"txt", filename="ctx.txt", content_type="text/plain; charset=utf-8")
    uploader.upload(account("u1"), b"wav", filename="a.wav", content_type="audio/wav")
    assert entry["type"] == "file" and entry["file_class"] == "document" and entry["context"] == "full"
    assert [c for c in client.calls if c[0] in ("sts", "parse")] == [
        ("sts", "file"), ("parse", "id-1"), ("sts", "file"), ("parse", "id-4"), ("sts", "audio")]


def test_expired_and_forgotten_entries_are_uploaded_again(monkeypatch):
    client = FakeClient()
    uploader = Uploader(client)  # type: ignore[arg-type]
    me = account("u1")
    for data in (b"1", b"2", b"1"):
        uploader.upload(me, data, filename="a.png", content_type="image/png")
    assert len([c for c in client.calls if c[0] == "sts"]) == 2
    uploader.forget()
    uploader.upload(me, b"1", filename="a.png", content_type="image/png")
    assert len([c for c in client.calls if c[0] == "sts"]) == 3
    monkeypatch.setattr(Uploader, "TTL", -1.0)
    uploader.upload(me, b"9", filename="a.png", content_type="image/png")
    uploader.upload(me, b"9", filename="a.png", content_type="image/png")  # already expired
    assert len([c for c in client.calls if c[0] == "sts"]) == 5


def test_tokenless_identities_are_not_cached():
    client = FakeClient()
    uploader = Uploader(client)  # type: ignore[arg-type]
    anonymous = Identity(cookie="ssxmod_itna=x")
    for _ in range(2):
        uploader.upload(anonymous, b"x", filename="a.png", content_type="image/png")
    assert len([c for c in client.calls if c[0] == "sts"]) == 2


def test_concurrent_uploads_keep_the_cache_consistent():
    uploader = Uploader(FakeClient())  # type: ignore[arg-type]
    me, errors = account("u1"), []

    def work(n: int) -> None:
        try:
            for i in range(50):
                uploader.upload(me, bytes([n, i % 5]), filename="a.png", content_type="image/png")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len([c for c in uploader.client.calls if c[0] == "sts"]) == 8 * 5  # each distinct upload once
