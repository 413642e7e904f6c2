"""Self-test of the emulator's upload side (§7), with ``requests`` and Aliyun's own ``oss2`` SDK as clients.

``oss2`` signs V4 independently of both the emulator and the proxy, so a PUT it
signs being accepted (and a tampered one refused) shows the emulator's verifier
follows OSS, not just our own signer.
"""

from __future__ import annotations

from typing import Any

import oss2
import pytest
import requests

from tests.fake_qwen import Scenario, make_jwt
from tests.fake_qwen.uploads import INVALID_INPUT_DETAILS, OSS_BUCKET, PARSE_ERROR_MSG
from tests.helpers import PNG, TIMEOUT, bucket_for, grant, put, site
from tests.helpers import headers as site_headers
from tests.helpers import UPLOADER_TOKEN as TOKEN

# ------------------------------------------------------------ getstsToken


def test_sts_v2_is_wrapped_and_v1_flat(base, fake):
    v2 = site(base, "/api/v2/files/getstsToken", {"filename": "a.png", "filesize": 10, "filetype": "image"}).json()
    v1 = site(base, "/api/v1/files/getstsToken", {"filename": "a.png", "filesize": "10", "filetype": "image"}).json()
    assert v2["success"] is True and "access_key_id" in v2["data"]
    assert "success" not in v1 and "access_key_id" in v1
    for answer in (v2["data"], v1):
        assert answer["region"] == "oss-ap-southeast-1" and answer["bucketname"] == OSS_BUCKET
        assert answer["file_path"].startswith("uploader-0001/") and answer["file_path"].endswith("_a.png")
        assert "x-oss-signature=" in answer["file_url"] and answer["file_id"] in answer["file_path"]
    assert v2["data"]["file_id"] != v1["file_id"], "every call mints a new object"


@pytest.mark.parametrize("body", [
    {"filename": "a.png", "filesize": "10"},
    {"filename": "", "filesize": "10", "filetype": "image"},
    {"filename": "a.png", "filesize": "ten", "filetype": "image"},
    {"filename": "a.png", "filesize": "10", "filetype": "picture"},
])
def test_sts_refuses_bad_file_information(base, fake, body):
    answer = site(base, "/api/v2/files/getstsToken", body).json()
    assert answer["success"] is False and answer["data"]["details"] == "Invalid file information!"


def test_sts_rate_limit_per_account(base, fake):
    fake.configure(sts_limit=2)
    grant(base), grant(base)
    refused = site(base, "/api/v2/files/getstsToken", {"filename": "a", "filesize": 1, "filetype": "file"}).json()
    assert refused["success"] is False and refused["data"]["code"] == "RateLimited"
    assert "access_key_id" in grant(base, token=make_jwt("another-user")), "the limit is per account"


def test_sts_generations_can_be_switched_off_and_fields_omitted(base, fake):
    fake.configure(sts_v2_available=False, sts_omit=("security_token",))
    assert site(base, "/api/v2/files/getstsToken", {}).status_code == 404
    assert "security_token" not in grant(base, path="/api/v1/files/getstsToken")


def test_sts_needs_a_valid_token(base, fake):
    resp = site(base, "/api/v2/files/getstsToken", {"filename": "a", "filesize": 1, "filetype": "image"},
                token=make_jwt(exp=1))
    assert resp.json()["data"]["code"] == "unauthorized"


# ------------------------------------------------------------ the bucket


def test_oss2_signed_put_is_verified_and_stored(base, fake):
    answer = grant(base, filename="报告 v2 (final).png")
    result = put(base, answer)
    assert result.status == 200 and result.etag
    stored = fake.objects[answer["file_path"]]
    assert stored.data == PNG and stored.content_type == "image/png"
    assert stored.authorization.startswith("OSS4-HMAC-SHA256 Credential=" + answer["access_key_id"])


@pytest.mark.parametrize(("tamper", "code"), [
    ({"secret": "wrong-secret"}, "SignatureDoesNotMatch"),
    ({"token": "another-token"}, "InvalidSecurityToken"),
])
def test_bad_credentials_are_refused(base, fake, tamper, code):
    answer = grant(base)
    with pytest.raises(oss2.exceptions.OssError) as info:
        put(base, answer, **tamper)
    assert info.value.status == 403 and info.value.code == code
    assert fake.objects == {}


def test_grant_is_pinned_to_its_object(base, fake):
    first, second = grant(base), grant(base)
    with pytest.raises(oss2.exceptions.OssError) as info:
        bucket_for(base, first).put_object(second["file_path"], PNG, headers={"Content-Type": "image/png"})
    assert info.value.status == 403 and info.value.code == "AccessDenied"


def test_content_type_must_fit_the_filetype(base, fake):
    answer = grant(base)
    with pytest.raises(oss2.exceptions.OssError) as info:
        put(base, answer, content_type="text/html")
    assert info.value.status == 400 and info.value.code == "InvalidArgument"


def test_tampered_header_breaks_the_signature(base, fake):
    answer = grant(base)
    url = f"{base}/{OSS_BUCKET}/{answer['file_path']}"
    req = oss2.http.Request("PUT", url, data=PNG, headers={"Content-Type": "image/png"},
                            region="ap-southeast-1", product="oss")
    bucket_for(base, answer).auth._sign_request(req, OSS_BUCKET, answer["file_path"])
    headers = {k: v for k, v in req.headers.items() if v is not None}
    assert requests.put(url, data=PNG, headers=headers, timeout=TIMEOUT).status_code == 200
    headers["Content-Type"] = "image/gif"  # a signed header changed after signing
    resp = requests.put(url, data=PNG, headers=headers, timeout=TIMEOUT)
    assert resp.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in resp.content
    assert resp.headers["Content-Type"] == "application/xml"


@pytest.mark.parametrize(("fault", "status", "code"), [
    ("access_denied", 403, "AccessDenied"),
    ("internal_error", 500, "InternalError"),
    ("request_time_skewed", 403, "RequestTimeTooSkewed"),
])
def test_oss_faults(base, fake, fault, status, code):
    answer = grant(base)
    fake.configure(oss_fault=fault)
    with pytest.raises(oss2.exceptions.OssError) as info:
        put(base, answer)
    assert info.value.status == status and info.value.code == code


# ------------------------------------------------------------ parse


def uploaded_document(base: str) -> dict:
    answer = grant(base, filename="a.pdf", size=8, filetype="file")
    put(base, answer, data=b"%PDF-1.7", content_type="application/pdf")
    return answer


def poll(base: str, file_id: str) -> dict:
    answer = site(base, "/api/v2/files/parse/status", {"file_id_list": [file_id]}).json()
    assert answer["success"] is True
    return answer["data"][0]


def test_parse_is_pending_then_success(base, fake):
    fake.configure(parse_polls=2)
    doc = uploaded_document(base)
    assert site(base, "/api/v2/files/parse", {"file_id": doc["file_id"]}).json()["success"] is True
    assert [poll(base, doc["file_id"])["status"] for _ in range(3)] == ["pending", "pending", "success"]


def test_parse_failure_carries_an_error_message(base, fake):
    fake.configure(parse_polls=0, parse_result="failed")
    doc = uploaded_document(base)
    site(base, "/api/v2/files/parse", {"file_id": doc["file_id"]})
    assert poll(base, doc["file_id"]) == {"file_id": doc["file_id"], "status": "failed", "error_msg": PARSE_ERROR_MSG}


def test_parse_outage_shapes(base, fake):
    doc = uploaded_document(base)
    fake.configure(parse_outage=True)
    assert site(base, "/api/v2/files/parse", {"file_id": doc["file_id"]}).json()["data"] == {"code": "Internal_Server_Error"}
    status = site(base, "/api/v2/files/parse/status", {"file_id_list": [doc["file_id"]]}).json()
    assert status["success"] is False and status["data"]["code"] == "Internal_Server_Error"


def test_parse_of_unknown_file(base, fake):
    assert site(base, "/api/v2/files/parse", {"file_id": "nope"}).json()["data"]["code"] == "Not_Found"


def test_scenario_checks_upload_switches():
    with pytest.raises(ValueError):
        Scenario(oss_fault="nope")
    with pytest.raises(ValueError):
        Scenario(parse_result="maybe")


# ------------------------------------------------------------ files[] in a completion


def completion(base: str, files: list) -> requests.Response:
    headers = site_headers(TOKEN, bearer=False)
    chat = requests.post(f"{base}/api/v2/chats/new", json={"models": ["qwen3.7-plus"], "chat_type": "t2t"},
                         headers=headers, timeout=TIMEOUT).json()["data"]["id"]
    message = {"fid": "f1", "role": "user", "content": "what is this?", "files": files, "chat_type": "t2t",
               "feature_config": {"output_schema": "phase", "thinking_enabled": False}}
    body = {"stream": True, "chat_id": chat, "model": "qwen3.7-plus", "messages": [message]}
    return requests.post(f"{base}/api/v2/chat/completions?chat_id={chat}", json=body, headers=headers,
                         timeout=TIMEOUT)


def image_entry(base: str, **extra: Any) -> dict:
    answer = grant(base)
    put(base, answer)
    return {"type": "image", "file_class": "vision", "id": answer["file_id"], "url": answer["file_url"], **extra}


def test_uploaded_image_is_accepted_and_recorded(base, fake):
    entry = image_entry(base)
    resp = completion(base, [entry])
    assert b'"phase": "answer"' in resp.content and b"error" not in resp.content
    chat = next(iter(fake.chats.values()))
    assert chat["messages"][0]["files"] == [entry]


@pytest.mark.parametrize(("make", "reason"), [
    (lambda base: ["not an object"], "entry without a known type"),
    (lambda base: [{"type": "picture", "url": "x"}], "entry without a known type"),
    (lambda base: [{"type": "image"}], "entry without a url"),
    (lambda base: [{"type": "image", "url": "https://example.com/cat.png"}], "url is not an upload of this account"),
    (lambda base: [image_entry(base, file_class="document")], "file_class 'document' does not fit type 'image'"),
    (lambda base: [image_entry(base) for _ in range(6)], "too many attachments of one kind"),
])
def test_unusable_files_get_invalid_input_in_the_stream(base, fake, make, reason):
    resp = completion(base, make(base))
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert INVALID_INPUT_DETAILS in resp.content.decode() and '"invalid_input"' in resp.content.decode()
    assert fake.uploads.refusals == [reason]


def test_unparsed_document_and_mixed_kinds_are_refused(base, fake):
    doc = uploaded_document(base)
    resp = completion(base, [{"type": "file", "url": doc["file_url"]}])
    assert b"invalid_input" in resp.content
    audio = grant(base, filename="a.wav", size=4, filetype="audio")
    put(base, audio, data=b"RIFF", content_type="audio/wav")
    completion(base, [image_entry(base), {"type": "audio", "url": audio["file_url"]}])
    assert fake.uploads.refusals == ["document was not parsed", "media of different kinds in one turn"]
