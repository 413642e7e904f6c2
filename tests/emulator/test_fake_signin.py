"""The emulator's sign-in by email and password (§2.4): each generation's answers, refusals, WAF and limits."""

from __future__ import annotations

import hashlib
from http.cookies import SimpleCookie

import pytest
import requests

from tests.fake_qwen import FakeQwen
from tests.helpers import FIXTURES

TIMEOUT = 5
EMAIL, PASSWORD = "signin@example.com", "fake-password-1"
GOOD = {"email": EMAIL, "password": hashlib.sha256(PASSWORD.encode()).hexdigest()}
AUTH_HOST = {"version": "0.3.12", "x-request-origin": "https://chat.qwen.ai", "source": "web",
             "Sec-Fetch-Site": "same-site"}


def signin(base: str, path: str, body: dict, headers: dict | None = None) -> requests.Response:
    return requests.post(base + path, json=body, headers=headers or {}, timeout=TIMEOUT)


def test_auth_host_signin_gives_access_token_and_refresh_cookie(fake: FakeQwen, base: str) -> None:
    user = fake.add_account(EMAIL, PASSWORD)
    resp = signin(base, "/api/v2/auths/signin", GOOD, AUTH_HOST)
    assert resp.status_code == 200
    access = resp.json()["data"]["access_token"]
    assert access.count(".") == 2 and "token" not in resp.cookies
    set_cookie = resp.headers["Set-Cookie"]  # Domain=.qwen.ai: a jar for 127.0.0.1 rightly drops it
    assert "Domain=.qwen.ai" in set_cookie
    refresh = SimpleCookie(set_cookie)["refresh_token"].value
    assert fake.refresh_tokens[refresh] == user
    renewed = requests.get(base + "/api/v2/auths/refresh", headers={**AUTH_HOST, "Cookie": f"refresh_token={refresh}"},
                           timeout=TIMEOUT)
    assert renewed.status_code == 200 and renewed.json()["data"]["access_token"].count(".") == 2


def test_auth_host_demands_its_headers(fake: FakeQwen, base: str) -> None:
    fake.add_account(EMAIL, PASSWORD)
    headers = {k: v for k, v in AUTH_HOST.items() if k != "version"}
    resp = signin(base, "/api/v2/auths/signin", GOOD, headers)
    assert resp.json()["success"] is False and "version" in resp.json()["data"]["details"]


def test_v2_without_same_site_is_the_site_own_signin(fake: FakeQwen, base: str) -> None:
    fake.add_account(EMAIL, PASSWORD)
    resp = signin(base, "/api/v2/auths/signin", GOOD)
    assert resp.status_code == 200 and resp.cookies["token"].count(".") == 2 and "access_token" not in resp.json()["data"]


@pytest.mark.parametrize("auth_host", [True, False])
def test_wrong_password_is_a_401(fake: FakeQwen, base: str, auth_host: bool) -> None:
    fake.add_account(EMAIL, PASSWORD)
    bad = {**GOOD, "password": hashlib.sha256(b"wrong").hexdigest()}
    resp = signin(base, "/api/v2/auths/signin", bad, AUTH_HOST if auth_host else None)
    assert resp.status_code == 401 and resp.json()["data"]["code"] == "Unauthorized"


def test_retired_generations_answer_as_the_real_ones(fake: FakeQwen, base: str) -> None:
    fake.add_account(EMAIL, PASSWORD)
    v1 = signin(base, "/api/v1/auths/signin", GOOD)  # retired by default: the Aliyun gateway page (the capture)
    captured = (FIXTURES / "signin-v1-405-page.partial.html").read_text()
    assert v1.status_code == 405 and v1.text.startswith(captured[:200])
    fake.configure(signin_generations=("v1",))
    assert signin(base, "/api/v2/auths/signin", GOOD, AUTH_HOST).status_code == 404
    assert signin(base, "/api/v2/auths/signin", GOOD).status_code == 404
    assert signin(base, "/api/v1/auths/signin", GOOD).json()["token"].count(".") == 2


def test_signin_limit_per_ip_draws_the_waf_page(fake: FakeQwen, base: str) -> None:
    fake.add_account(EMAIL, PASSWORD)
    fake.configure(signin_limit=3)
    answers = [signin(base, "/api/v2/auths/signin", GOOD) for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert answers[3].status_code == 200 and "aliyun_waf" in answers[3].text
    assert answers[3].headers["Content-Type"].startswith("text/html")


def test_one_account_can_meet_a_fault_at_signin(fake: FakeQwen, base: str) -> None:
    fake.add_account(EMAIL, PASSWORD)
    fake.add_account("other@example.com", PASSWORD)
    fake.configure(signin_faults={EMAIL: "waf_html"})
    assert "aliyun_waf" in signin(base, "/api/v2/auths/signin", GOOD).text
    other = {**GOOD, "email": "other@example.com"}
    assert signin(base, "/api/v2/auths/signin", other).cookies["token"].count(".") == 2
