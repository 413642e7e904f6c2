"""Accounts given as email:password, over real sockets: each sign-in generation, refusals, the WAF, limits."""

from __future__ import annotations

import logging

import openai
import pytest
import requests

from tests.fake_qwen import make_jwt
from tests.helpers import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
EMAIL, PASSWORD = "alice@example.com", "fake-Pa55word-alice"
SIGNIN_PATHS = ("/api/v2/auths/signin", "/api/v1/auths/signin")


def health(server) -> dict:
    return requests.get(server.url + "/health", timeout=5).json()["accounts"]


def signins(fake) -> list:
    return [r for r in fake.requests if r.path in SIGNIN_PATHS and r.method == "POST"]


def chat(server) -> requests.Response:
    return requests.post(server.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=20)


def tokens_used(fake) -> list[str]:
    return [r.cookies.get("token", "") for r in fake.requests if r.path == "/api/v2/chat/completions"]


def test_auth_host_signin_serves_turns_and_keeps_the_refresh_token(make_proxy, fake):
    fake.add_account(EMAIL, PASSWORD)
    server = make_proxy(COOKIE=f"{EMAIL}:{PASSWORD}")
    answer = server.client().chat.completions.create(**CHAT)
    assert answer.choices[0].message.content
    first = signins(fake)
    assert len(first) == 1 and first[0].headers["sec-fetch-site"] == "same-site"  # the auth host, newest first
    assert first[0].json["password"] != PASSWORD and len(first[0].json["password"]) == 64  # SHA-256 hex
    account = health(server)["accounts"][0]
    assert account["source"] == "password" and account["renewal"] == "refresh_token"
    assert account["token_valid_for_s"] <= 900  # the auth host's 15-minute access token
    assert tokens_used(fake) and all(t.count(".") == 2 for t in tokens_used(fake))
    server.client().chat.completions.create(**CHAT)
    assert len(signins(fake)) == 1  # signed in once, not per turn


@pytest.mark.parametrize(("live", "attempts"), [(("v2",), 2), (("v1",), 3)])
def test_older_generations_are_tried_in_turn(make_proxy, fake, live, attempts):
    fake.add_account(EMAIL, PASSWORD)
    fake.configure(signin_generations=live)
    server = make_proxy(COOKIE=f"{EMAIL}:{PASSWORD}")
    assert server.client().chat.completions.create(**CHAT).choices[0].message.content
    assert len(signins(fake)) == attempts
    assert health(server)["accounts"][0]["renewal"] == "sign_in"  # no refresh token: it signs in again when due


def test_a_wrong_password_is_that_account_s_failure_only(make_proxy, fake):
    fake.add_account(EMAIL, "another-password")
    server = make_proxy(COOKIE=f"{EMAIL}:{PASSWORD}|||token={make_jwt('user-ok')}")
    for _ in range(3):
        assert chat(server).status_code == 200
    assert len(signins(fake)) == 1  # down after the refusal: not asked again on every turn
    accounts = {a["account"]: a for a in health(server)["accounts"]}
    assert accounts["account-1"]["state"] == "down" and accounts["account-1"]["reason"] == "signin_refused"
    assert accounts["account-1"]["last_error"] == "auth" and accounts["account-2"]["state"] == "healthy"


@pytest.mark.parametrize("fault", ["waf_html", "gateway_html_405"])
def test_waf_page_at_signin_is_that_account_s_failure_only(make_proxy, fake, fault):
    fake.add_account(EMAIL, PASSWORD)
    fake.configure(signin_faults={EMAIL: "waf_html"}, signin_generations=("auth_host", "v2", "v1"))
    server = make_proxy(COOKIE=f"{EMAIL}:{PASSWORD}|||token={make_jwt('user-ok')}")
    assert chat(server).status_code == 200
    account = health(server)["accounts"][0]
    assert account["state"] == "down" and account["reason"] == "signin_limited"
    assert len(signins(fake)) == 1  # the WAF page stops at once: no other generation is hammered


def test_the_sign_in_limit_gives_a_429_that_says_so(make_proxy, fake):
    fake.add_account(EMAIL, PASSWORD)
    fake.configure(signin_limit=0)
    server = make_proxy(COOKIE=f"{EMAIL}:{PASSWORD}")
    with pytest.raises(openai.RateLimitError) as caught:
        server.client().chat.completions.create(**CHAT)
    assert caught.value.response.headers["Retry-After"]
    assert "sign" in caught.value.message and PASSWORD not in caught.value.message
    assert health(server)["accounts"][0]["reason"] == "signin_limited"


def test_signs_in_again_when_renewal_is_refused(make_proxy, fake):
    fake.add_account(EMAIL, PASSWORD)
    server = make_proxy(COOKIE=f"{EMAIL}:{PASSWORD}")
    assert chat(server).status_code == 200
    fake.refresh_tokens.clear()  # the auth host forgets every refresh token (a logout elsewhere)
    result = requests.post(server.url + "/refresh-token", headers=AUTH, timeout=20).json()["data"][0]
    assert result["result"] in ("renewed", "unchanged")  # the same second's token for one account is the same JWT
    assert len(signins(fake)) == 2
    assert len(fake.requests_to("/api/v2/auths/refresh")) == 1  # tried the refresh token first
    assert chat(server).status_code == 200


def test_a_refused_token_mid_run_signs_in_again(make_proxy, fake):
    fake.add_account(EMAIL, PASSWORD)
    fake.configure(signin_generations=("v2",))
    server = make_proxy(COOKIE=f"{EMAIL}:{PASSWORD}")
    assert chat(server).status_code == 200
    fake.invalid_tokens.update(tokens_used(fake))  # the site revokes the token
    fake.configure(token_ttl=29 * 86400)  # so the next sign-in's token differs even within the same second
    assert chat(server).status_code == 200
    assert len(signins(fake)) == 4  # (auth host 404, v2) twice
    assert health(server)["accounts"][0]["state"] == "healthy"


def test_passwords_never_reach_logs_health_or_stores(make_proxy, fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake.add_account(EMAIL, PASSWORD)
    fake.add_account("bob@example.com", "fake-bob-password")
    store, state = tmp_path / "tokens.json", tmp_path / "state.sqlite3"
    server = make_proxy(COOKIE=f"{EMAIL}:{PASSWORD}|||bob@example.com:wrong-bob-password",
                        TOKEN_STORE_FILE=str(store), STATE_FILE=str(state), ADMIN_KEY="fake-admin-key")
    for _ in range(3):
        chat(server)
    requests.post(server.url + "/refresh-token", headers=AUTH, timeout=20)
    added = requests.post(server.url + "/admin/api/accounts", json={"cookie": "carol@example.com:fake-carol-pw"},
                          headers={"Authorization": "Bearer fake-admin-key"}, timeout=20)
    assert added.status_code == 201
    shown = requests.get(server.url + "/health", timeout=5).text
    shown += requests.get(server.url + "/admin/api/accounts", headers={"Authorization": "Bearer fake-admin-key"},
                          timeout=5).text
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    for secret in (PASSWORD, "wrong-bob-password", "fake-carol-pw"):
        assert secret not in caplog.text and secret not in shown
        assert secret.encode() not in written
    assert store.exists() and state.exists()


def test_the_refresher_does_not_retry_a_refused_sign_in_every_tick(make_proxy, fake):
    fake.add_account(EMAIL, "another-password")
    server = make_proxy(COOKIE=f"{EMAIL}:{PASSWORD}")
    pool = server.app.extensions["qwen2openai"].pool
    for _ in range(3):  # three ticks of the background refresher
        results = pool.refresh_due()
    assert len(signins(fake)) == 1 and results == []
