"""The OSS V4 signer (``qwen_client/oss.py``): fixed vectors, and agreement with Aliyun's own ``oss2`` SDK."""

from __future__ import annotations

import datetime as dt

import oss2
import oss2.auth
import oss2.http
import pytest
from oss2.credentials import StaticCredentialsProvider

from qwen_client import oss

NOW = dt.datetime(2026, 9, 18, 4, 30, 0, tzinfo=dt.timezone.utc)

# (credentials, bucket, region as STS gives it, key, content type, expected signature).
# The signatures were produced by oss2 2.19.1 for the same inputs at NOW.
VECTORS = [
    (oss.Credentials("STS.NT0000000000000000", "secret000000000000", "CAIS0000000000000000"),
     "qwen-webui-prod", "oss-ap-southeast-1", "0b9e2f4c/3f2e_a.png", "image/png",
     "75c8f0a199275f656692b294ff92068b720483217e6aae5a45618105ce69036f"),
    (oss.Credentials("STS.FAKEKEY", "fake-secret"),
     "bucket-1", "cn-hangzhou", "u/报告 v2 (final).pdf", "application/pdf",
     "f628aa395f6a46135d1617f11a1d5ca15e6c73aac4a78b8f5a79e941c07b709c"),
    (oss.Credentials("AK", "s", "tok+/="),
     "qwen-webui-prod", "oss-ap-southeast-1", "u/a~b_c-d.e!*'();:@&=+$,?#[].wav", "audio/wav",
     "041e663eada02d2dba49ed83d3cd058655f32e6d3ab91dd025eb2bdc390e729a"),
]


@pytest.mark.parametrize(("creds", "bucket", "region", "key", "content_type", "signature"), VECTORS)
def test_fixed_vectors(creds, bucket, region, key, content_type, signature):
    headers = oss.sign_headers("PUT", bucket, key, {"Content-Type": content_type}, creds, region, NOW)
    scope = f"20260918/{oss.scope_region(region)}/oss/aliyun_v4_request"
    assert headers["Authorization"] == f"OSS4-HMAC-SHA256 Credential={creds.access_key_id}/{scope}, Signature={signature}"
    assert headers["x-oss-date"] == "20260918T043000Z" and headers["x-oss-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert headers["Content-Type"] == content_type
    assert ("x-oss-security-token" in headers) is bool(creds.security_token)


def _oss2_authorization(creds: oss.Credentials, bucket: str, region: str, key: str, headers: dict) -> tuple[str, str]:
    provider = StaticCredentialsProvider(creds.access_key_id, creds.access_key_secret, creds.security_token)
    req = oss2.http.Request("PUT", "http://unused/", data=b"", headers=dict(headers),
                            region=oss.scope_region(region), product="oss")
    oss2.ProviderAuthV4(provider)._sign_request(req, bucket, key)
    return req.headers["authorization"], req.headers["x-oss-date"]


@pytest.mark.parametrize("key", ["a.png", "dir/sub dir/é ü 😀.jpg", "u/%41%2F.txt", "x/" + "long-name-" * 30])
@pytest.mark.parametrize("extra", [{}, {"x-oss-object-acl": "private", "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}])
def test_agrees_with_oss2_now(key, extra):
    """oss2 signs at its own clock; we sign the same request at the date it chose."""
    creds = oss.Credentials("STS.NTcheck", "check-secret", "CAIScheck")
    headers = {"Content-Type": "image/jpeg", **extra}
    theirs, date = _oss2_authorization(creds, "qwen-webui-prod", "oss-ap-southeast-1", key, headers)
    when = dt.datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    ours = oss.sign_headers("PUT", "qwen-webui-prod", key, headers, creds, "oss-ap-southeast-1", when)
    assert ours["Authorization"] == theirs


@pytest.mark.parametrize(("region", "scope"), [
    ("oss-ap-southeast-1", "ap-southeast-1"), ("ap-southeast-1", "ap-southeast-1"), ("oss-cn-hangzhou", "cn-hangzhou"),
])
def test_scope_region(region, scope):
    assert oss.scope_region(region) == scope


@pytest.mark.parametrize(("bucket", "key", "endpoint", "path_style", "url"), [
    ("qwen-webui-prod", "u/1_a b.png", "oss-accelerate.aliyuncs.com", False,
     "https://qwen-webui-prod.oss-accelerate.aliyuncs.com/u/1_a%20b.png"),
    ("qwen-webui-prod", "u/报.png", "http://127.0.0.1:9000/", True, "http://127.0.0.1:9000/qwen-webui-prod/u/%E6%8A%A5.png"),
    ("b", "k", "https://oss-ap-southeast-1.aliyuncs.com", False, "https://b.oss-ap-southeast-1.aliyuncs.com/k"),
])
def test_object_url(bucket, key, endpoint, path_style, url):
    assert oss.object_url(bucket, key, endpoint, path_style) == url


def test_credentials_repr_hides_secrets():
    text = repr(oss.Credentials("STS.id", "the-secret", "the-token"))
    assert "STS.id" in text and "the-secret" not in text and "the-token" not in text


def test_signature_changes_with_every_signed_input():
    creds = oss.Credentials("AK", "secret", "token")
    base = oss.sign_headers("PUT", "b", "k", {"Content-Type": "image/png"}, creds, "r", NOW)["Authorization"]
    variants = [
        oss.sign_headers("PUT", "b", "k2", {"Content-Type": "image/png"}, creds, "r", NOW),
        oss.sign_headers("PUT", "b2", "k", {"Content-Type": "image/png"}, creds, "r", NOW),
        oss.sign_headers("PUT", "b", "k", {"Content-Type": "image/gif"}, creds, "r", NOW),
        oss.sign_headers("PUT", "b", "k", {"Content-Type": "image/png"}, creds, "r2", NOW),
        oss.sign_headers("PUT", "b", "k", {"Content-Type": "image/png"}, oss.Credentials("AK", "s2", "token"), "r", NOW),
        oss.sign_headers("PUT", "b", "k", {"Content-Type": "image/png"}, oss.Credentials("AK", "secret", "t2"), "r", NOW),
        oss.sign_headers("PUT", "b", "k", {"Content-Type": "image/png"}, creds, "r", NOW + dt.timedelta(seconds=1)),
    ]
    assert len({base} | {v["Authorization"] for v in variants}) == len(variants) + 1
