"""Several accounts behind one endpoint, over real sockets: renewal, failover, cool-downs, persistence."""

from __future__ import annotations

import threading
import time

import openai
import pytest
import requests

from identity_pool.accounts import jwt_claims
from identity_pool.pool import Failure
from tests.helpers import API_KEY, spare_chats
from tests.fake_qwen import FAULTS, make_jwt

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}


def cookie(user: str, *, ttl: int = 30 * 86400, session: str | None = None, refresh: str | None = None) -> str:
    parts = [f"token={make_jwt(user, ttl=ttl)}", "ssxmod_itna=fake-itna"]
    if session:
        parts.append(f"qwen_session={session}")
    if refresh:
        parts.append(f"refresh_token={refresh}")
    return "; ".join(parts)


def health(server) -> dict:
    return requests.get(server.url + "/health", timeout=5).json()


def states(server) -> dict[str, str]:
    return {a["account"]: a["state"] for a in health(server)["accounts"]["accounts"]}


def pool_of(server):
    return server.app.extensions["qwen2openai"].pool


def wait_for(condition, timeout: float = 5.0) -> bool:
    """Until ``condition()`` holds; the background refresher runs on its own schedule."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_three_accounts_expired_challenged_healthy(make_proxy, fake):
    """One token expired (its session renews it), one account challenged by the WAF, one fine."""
    fake.configure(session_renewal=True, account_faults={"user-waf": "waf_html"})
    fake.sessions["sid-expired"] = make_jwt("user-expired", exp=int(time.time()) - 60)
    server = make_proxy(COOKIE="|||".join([
        cookie("user-expired", ttl=-60, session="sid-expired"),
        cookie("user-waf"),
        cookie("user-ok"),
    ]))
    client = server.client()
    for n in range(100):
        answer = client.chat.completions.create(**CHAT)
        assert answer.choices[0].message.content == "Hello from fake Qwen.", n
    assert states(server) == {"account-1": "healthy", "account-2": "down", "account-3": "healthy"}
    view = {a["account"]: a for a in health(server)["accounts"]["accounts"]}
    assert view["account-2"]["last_error"] == "challenge" and 60 < view["account-2"]["cooldown_s"] <= 120
    assert view["account-1"]["token_valid_for_s"] > 86400  # renewed reactively
    assert health(server)["status"] == "degraded"
    assert len(fake.requests_to("/api/v1/auths/")) == 1
    assert sum(a["ok"] for a in view.values()) == 100


def test_a_token_near_expiry_is_renewed_in_the_background(make_proxy, fake):
    refresh = fake.issue_refresh_token("user-short")
    server = make_proxy(COOKIE=cookie("user-short", ttl=120, refresh=refresh), TOKEN_REFRESH_CHECK_SECONDS=0.05)
    account = pool_of(server).identities[0]
    before = account.token
    assert wait_for(lambda: account.token != before)
    assert jwt_claims(account.token)["exp"] - time.time() > 800  # a fresh 15-minute access token
    assert account.refresh_token != refresh and account.refresh_token in fake.refresh_tokens
    request = fake.requests_to("/api/v2/auths/refresh")[0]
    assert request.headers["version"] == "0.3.12" and request.headers["Sec-Fetch-Site"] == "same-site"
    assert server.client().chat.completions.create(**CHAT).choices[0].message.content


def test_a_token_revoked_mid_run_is_renewed_and_the_request_succeeds(make_proxy, fake):
    refresh = fake.issue_refresh_token("user-a")
    server = make_proxy(COOKIE=cookie("user-a", refresh=refresh), AUTO_REFRESH_TOKEN=False)
    client = server.client()
    assert client.chat.completions.create(**CHAT).choices[0].message.content
    fake.invalid_tokens.add(pool_of(server).identities[0].token)
    for stream in (False, True):
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**CHAT, stream=True)
                           if c.choices)
        else:
            text = client.chat.completions.create(**CHAT).choices[0].message.content
        assert text == "Hello from fake Qwen."
    assert len(fake.requests_to("/api/v2/auths/refresh")) == 1
    assert states(server) == {"account-1": "healthy"}


def test_a_bare_token_that_expired_is_taken_out_with_a_clear_error(make_proxy, fake):
    server = make_proxy(COOKIE="", QWEN_TOKEN=make_jwt("user-bare", ttl=-10))
    with pytest.raises(openai.InternalServerError) as info:
        server.client().chat.completions.create(**CHAT)
    assert info.value.status_code == 502 and "fresh cookie" in info.value.message
    with pytest.raises(openai.InternalServerError) as info:
        server.client().chat.completions.create(**CHAT)
    assert info.value.status_code == 503 and "1 auth" in info.value.message
    assert int(info.value.response.headers["Retry-After"]) > 500


# Every emulator fault, met by account-1 only: the class it counts as (None: the user's own fault).
FAULT_CLASS = {
    "http_401": Failure.AUTH, "unauthorized": Failure.AUTH,
    "http_429": Failure.RATE_LIMIT, "rate_limited": Failure.RATE_LIMIT, "parallel_limited": Failure.RATE_LIMIT,
    "stream_quota_limit": Failure.RATE_LIMIT, "stream_success_false": Failure.RATE_LIMIT,
    "x5sec": Failure.CHALLENGE, "x5sec_in_stream": Failure.CHALLENGE, "waf_html": Failure.CHALLENGE,
    "waf_html_403": Failure.CHALLENGE, "waf_in_stream": Failure.CHALLENGE,
    "empty_stream": Failure.EMPTY, "created_only": Failure.EMPTY,
    "http_403": Failure.UPSTREAM, "http_404": Failure.UPSTREAM, "http_500": Failure.UPSTREAM,
    "http_502": Failure.UPSTREAM, "http_503": Failure.UPSTREAM, "http_504": Failure.UPSTREAM,
    "bad_request": Failure.UPSTREAM, "chat_not_found": Failure.UPSTREAM, "envelope_top_level": Failure.UPSTREAM,
    "stream_error_string": Failure.UPSTREAM, "stream_delta_error": Failure.UPSTREAM,
    "gateway_html_405": Failure.UPSTREAM, "non_json_200": Failure.UPSTREAM,
    "stream_error_code": None, "stream_data_inspection": None,
}
STATE_AFTER_ONE = {Failure.AUTH: "down", Failure.RATE_LIMIT: "down", Failure.CHALLENGE: "down",
                   Failure.EMPTY: "degraded", Failure.UPSTREAM: "degraded", None: "healthy"}


def test_every_fault_has_a_class():
    assert set(FAULT_CLASS) | {"error_after_content"} == set(FAULTS)


@pytest.mark.parametrize("fault", sorted(FAULT_CLASS))
def test_each_failure_class_gets_its_reaction(make_proxy, fake, fault):
    kind = FAULT_CLASS[fault]
    fake.configure(account_faults={"user-bad": fault})
    server = make_proxy(COOKIE=f"{cookie('user-bad')}|||{cookie('user-good')}", AUTO_REFRESH_TOKEN=False)
    response = requests.post(server.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=10)
    completions = fake.requests_to("/api/v2/chat/completions")
    if kind is None:  # the user's own bad request: not retried, not held against the account
        assert response.status_code == 400 and len(completions) == 1
    else:  # retried on the other account before any output
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "Hello from fake Qwen."
    account = {a["account"]: a for a in health(server)["accounts"]["accounts"]}["account-1"]
    assert account["state"] == STATE_AFTER_ONE[kind]
    assert account["last_error"] == (kind.value if kind else None)


def test_cooldowns_follow_what_the_site_said(make_proxy, fake):
    fake.configure(account_faults={"user-bad": "rate_limited"}, rate_limit_hours=2)
    server = make_proxy(COOKIE=f"{cookie('user-bad')}|||{cookie('user-good')}")
    assert server.client().chat.completions.create(**CHAT).choices[0].message.content
    account = health(server)["accounts"]["accounts"][0]
    assert 2 * 3600 - 30 < account["cooldown_s"] <= 2 * 3600


def test_when_every_account_is_rate_limited_the_client_gets_429_with_retry_after(make_proxy, fake):
    fake.configure(account_faults={"user-a": "x5sec", "user-b": "http_429"})
    server = make_proxy(COOKIE=f"{cookie('user-a')}|||{cookie('user-b')}")
    with pytest.raises(openai.RateLimitError):
        server.client().chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError) as info:
        server.client().chat.completions.create(**CHAT)
    assert info.value.code == "all_accounts_rate_limited"
    assert 50 <= int(info.value.response.headers["Retry-After"]) <= 60
    assert "1 challenge, 1 rate limit" in info.value.message
    assert health(server)["status"] == "down"


def test_a_failure_after_the_first_byte_is_not_retried(make_proxy, fake):
    fake.configure(account_faults={"user-a": "error_after_content"})
    server = make_proxy(COOKIE=f"{cookie('user-a')}|||{cookie('user-b')}")
    resp = requests.post(server.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH,
                         stream=True, timeout=10)
    body = resp.text
    assert resp.status_code == 200 and '"error"' in body and body.rstrip().endswith("data: [DONE]")
    assert len(fake.requests_to("/api/v2/chat/completions")) == 1
    assert states(server)["account-1"] == "degraded"


def test_refresh_token_endpoint(make_proxy, fake):
    fake.configure(session_renewal=True, token_ttl=3600)
    fake.sessions["sid-1"] = make_jwt("user-s", ttl=600)
    refresh = fake.issue_refresh_token("user-r")
    server = make_proxy(COOKIE="|||".join([cookie("user-s", ttl=600, session="sid-1"), cookie("user-r", refresh=refresh)]),
                        QWEN_TOKEN=make_jwt("user-bare"), AUTO_REFRESH_TOKEN=False)
    assert requests.post(server.url + "/refresh-token", timeout=5).status_code == 401
    answer = requests.post(server.url + "/refresh-token", headers=AUTH, timeout=10)
    results = answer.json()["data"]
    assert [r["result"] for r in results] == ["renewed", "renewed", "skipped"]
    assert [r["id"] for r in results] == ["user-s…", "user-r…", "user-b…"]
    assert refresh not in answer.text and "eyJ" not in answer.text
    one = requests.post(server.url + "/refresh-token", json={"account": 2}, headers=AUTH, timeout=10).json()
    assert [r["account"] for r in one["data"]] == ["account-2"]
    bad = requests.post(server.url + "/refresh-token", json={"account": 9}, headers=AUTH, timeout=10)
    assert bad.status_code == 400 and "1 to 3" in bad.json()["error"]["message"]


def test_renewed_tokens_survive_a_restart(make_proxy, fake, tmp_path):
    store = tmp_path / "data" / "tokens.json"
    refresh = fake.issue_refresh_token("user-r")
    settings = {"COOKIE": cookie("user-r", ttl=300, refresh=refresh), "TOKEN_STORE_FILE": str(store),
                "AUTO_REFRESH_TOKEN": False}
    first = make_proxy(**settings)
    requests.post(first.url + "/refresh-token", headers=AUTH, timeout=10).raise_for_status()
    renewed = pool_of(first).identities[0].token
    assert store.exists() and refresh not in fake.refresh_tokens  # rotated: the configured one is dead

    second = make_proxy(**settings)  # a restart with the same, now stale, configuration
    account = pool_of(second).identities[0]
    assert account.token == renewed
    rotated = account.refresh_token
    again = requests.post(second.url + "/refresh-token", headers=AUTH, timeout=10).json()["data"]
    assert again[0]["result"] in ("renewed", "unchanged")  # the same second can mint the same JWT
    assert rotated not in fake.refresh_tokens and account.refresh_token in fake.refresh_tokens
    assert (tmp_path / "data" / "tokens.json.bak").exists()


def test_parallel_streams_keep_the_pool_consistent(make_proxy, fake):
    fake.configure(chunk_chars=2)
    server = make_proxy(COOKIE="|||".join(cookie(f"user-{n}") for n in range(3)))
    client = server.client()
    errors: list[BaseException] = []

    def one() -> None:
        try:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**CHAT, stream=True)
                           if c.choices)
            assert text == "Hello from fake Qwen."
        except BaseException as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    accounts = health(server)["accounts"]
    assert sum(a["ok"] for a in accounts["accounts"]) == 50
    assert all(a["in_flight"] == 0 and a["failed"] == 0 for a in accounts["accounts"])
    assert accounts["healthy"] == 3


# ----------------------------------------------------------------- a spurious refusal (issue 11 §5)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", ["http_401", "unauthorized"])
def test_one_spurious_401_is_retried_once_when_renewal_confirms_the_token(make_proxy, fake, fault, stream):
    """The session profile hands back the same, valid token: the turn is tried again, the only account stays up."""
    server = make_proxy(AUTO_REFRESH_TOKEN=False)
    fake.configure(fault=fault, fault_times=1)
    reply = server.client().chat.completions.create(**CHAT, stream=stream)
    text = ("".join(c.choices[0].delta.content or "" for c in reply if c.choices) if stream
            else reply.choices[0].message.content)
    assert text == "Hello from fake Qwen."
    assert len(fake.requests_to("/api/v1/auths/")) == 1  # the renewal that vouched for the token
    assert len(fake.requests_to("/api/v2/chat/completions")) == 2
    [account] = health(server)["accounts"]["accounts"]
    assert (account["state"], account["failed"], account["ok"]) == ("healthy", 0, 1)
    assert server.app.extensions["qwen2openai"].conversations.janitor.wait_idle(5)
    refused, answered = [r.query["chat_id"] for r in fake.requests_to("/api/v2/chat/completions")]
    spares = spare_chats(server)  # first: it waits for a spare still being made
    kept = set(fake.chats) - spares
    assert kept == {answered}, "the refused turn's chat is deleted, the answered one kept"


def test_a_second_refusal_after_renewal_takes_the_account_down(make_proxy, fake):
    server = make_proxy(AUTO_REFRESH_TOKEN=False)
    fake.configure(fault="http_401", fault_times=2)
    with pytest.raises(openai.InternalServerError) as info:
        server.client().chat.completions.create(**CHAT)
    assert info.value.status_code == 502
    assert len(fake.requests_to("/api/v1/auths/")) == 1 and len(fake.requests_to("/api/v2/chat/completions")) == 2
    [account] = health(server)["accounts"]["accounts"]
    assert (account["state"], account["last_error"]) == ("down", "auth") and account["cooldown_s"] > 500


def test_a_failed_renewal_takes_the_account_down(make_proxy, fake):
    server = make_proxy(AUTO_REFRESH_TOKEN=False)
    fake.invalid_tokens.add(pool_of(server).identities[0].token)  # revoked: the session profile refuses it too
    with pytest.raises(openai.InternalServerError):
        server.client().chat.completions.create(**CHAT)
    assert len(fake.requests_to("/api/v1/auths/")) == 1
    [account] = health(server)["accounts"]["accounts"]
    assert (account["state"], account["last_error"]) == ("down", "auth")
