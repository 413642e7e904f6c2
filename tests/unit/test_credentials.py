"""Account lines: what each form means, what is refused, what is secret, and linear time on hostile lines."""

from __future__ import annotations

import hashlib
import time

import pytest

from identity_pool.credentials import CredentialError, parse_account, proxy_host, secrets_of
from tests.fake_qwen import make_jwt

JWT = make_jwt("user-1")


@pytest.mark.parametrize(("line", "kind", "email", "proxy"), [
    (f"token={JWT}; ssxmod_itna=x", "cookie", "", ""),
    (JWT, "token", "", ""),
    ("someone@example.com:pw", "password", "someone@example.com", ""),
    ("a.b@mail.example.co.uk:p:w=;x y", "password", "a.b@mail.example.co.uk", ""),
    (f"token={JWT} proxy=http://h:3128", "cookie", "", "http://h:3128"),
    ("someone@example.com:pw proxy=socks5h://u:p@h:1080", "password", "someone@example.com", "socks5h://u:p@h:1080"),
    (f"  {JWT}   proxy=https://h:443  ", "token", "", "https://h:443"),
])
def test_line_forms(line, kind, email, proxy):
    spec = parse_account(line)
    assert (spec.kind, spec.email, spec.proxy) == (kind, email, proxy)
    assert "pw" not in repr(spec) or spec.kind != "password"


def test_the_password_of_a_line_is_everything_after_the_first_colon():
    assert parse_account("someone@example.com:a:b c").password == "a:b c"


@pytest.mark.parametrize("line", ["", "   ", "no-equals-no-jwt", "a@b:c", "x\x00=1", "token=x proxy=ftp://h:1",
                                  "token=x proxy=http://", "token=x proxy=http://h:port", "token=x proxy=socks4://h:1"])
def test_refused_lines_never_echo_them(line):
    with pytest.raises(CredentialError) as caught:
        parse_account(line)
    assert line.strip() not in str(caught.value) or not line.strip()


def test_a_proxy_given_twice_is_refused():
    with pytest.raises(CredentialError):
        parse_account("token=x proxy=http://a:1", "http://b:2")


def test_proxy_host_hides_credentials():
    assert proxy_host("http://user:secret@10.0.0.5:3128") == "10.0.0.5:3128"
    assert proxy_host("") is None


def test_secrets_of_a_line():
    found = secrets_of("someone@example.com:pw-1 proxy=http://user:secret@h:1")
    assert {"pw-1", hashlib.sha256(b"pw-1").hexdigest(), "secret", "user:secret"} <= set(found)
    assert secrets_of("garbage") == []


@pytest.mark.parametrize("hostile", [
    "a@" + "b." * 100_000 + "c",  # a domain of many labels and no colon
    "a" + " " * 200_000 + "x",  # a long run of blanks
    "x@y.z:" + " proxy=" * 30_000,
    "a" * 200_000,
    ("a." * 70_000)[:200_000],
])
def test_hostile_lines_are_parsed_in_linear_time(hostile):
    started = time.perf_counter()
    try:
        parse_account(hostile)
    except CredentialError:
        pass
    assert time.perf_counter() - started < 2.0  # linear: milliseconds; quadratic: minutes (test_linear_scans)
