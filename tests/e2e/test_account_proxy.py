"""A proxy per account, over real sockets: a loopback HTTP proxy counts what passes through it."""

from __future__ import annotations

import base64

import pytest
import requests

from tests.fake_qwen import make_jwt
from tests.fake_qwen.media_out import TINY_PNG
from tests.helpers import API_KEY, PNG, CountingProxy, SocksProxy, free_port

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
TOKEN_A, TOKEN_B = make_jwt("user-proxied"), make_jwt("user-direct")


@pytest.fixture
def counting():
    with CountingProxy() as proxy:
        yield proxy


def chat(server, body: dict = CHAT) -> requests.Response:
    return requests.post(server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=20)


def health(server) -> list[dict]:
    return requests.get(server.url + "/health", timeout=5).json()["accounts"]["accounts"]


def completions_by(fake) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in fake.requests:
        if r.path == "/api/v2/chat/completions":
            counts[r.cookies.get("token", "")] = counts.get(r.cookies.get("token", ""), 0) + 1
    return counts


def test_only_that_account_s_calls_go_through_its_proxy(make_proxy, fake, counting):
    server = make_proxy(COOKIE=f"token={TOKEN_A} proxy={counting.url()}|||token={TOKEN_B}")
    for _ in range(4):
        assert chat(server).status_code == 200
    by_token = completions_by(fake)
    assert by_token[TOKEN_A] == 2 and by_token[TOKEN_B] == 2  # round-robin over both
    carried = [h.get("cookie", "") for m, t, h in counting.seen]
    assert carried and all(f"token={TOKEN_A}" in c for c in carried)  # nothing of account B
    assert counting.paths().count("/api/v2/chat/completions") == 2
    assert next(a for a in health(server) if a["account"] == "account-1")["proxy"] == f"127.0.0.1:{counting.port}"
    assert next(a for a in health(server) if a["account"] == "account-2")["proxy"] is None


def test_proxy_credentials_are_sent_and_never_shown(make_proxy, fake):
    with CountingProxy(auth=("proxyuser", "fake-proxy-secret")) as guarded:
        server = make_proxy(COOKIE=f"token={TOKEN_A} proxy={guarded.url('proxyuser:fake-proxy-secret')}")
        assert chat(server).status_code == 200
        assert guarded.paths().count("/api/v2/chat/completions") == 1
        shown = requests.get(server.url + "/health", timeout=5).text
        assert "fake-proxy-secret" not in shown and "proxyuser" not in shown
        assert f"127.0.0.1:{guarded.port}" in shown


def test_sign_in_and_its_auth_host_go_through_the_account_s_proxy(make_proxy, fake, counting):
    fake.add_account("proxied@example.com", "fake-pw-proxied")
    server = make_proxy(COOKIE=f"proxied@example.com:fake-pw-proxied proxy={counting.url()}")
    assert chat(server).status_code == 200
    assert counting.paths()[:1] == ["/api/v2/auths/signin"]  # the auth host, through the proxy
    fake.refresh_tokens.clear()
    requests.post(server.url + "/refresh-token", headers=AUTH, timeout=20)
    assert "/api/v2/auths/refresh" in counting.paths()
    assert counting.paths().count("/api/v2/auths/signin") == 2


def test_uploads_go_through_the_account_s_proxy(make_proxy, fake, counting):
    server = make_proxy(COOKIE=f"token={TOKEN_A} proxy={counting.url()}")
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    body = {**CHAT, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": image}}]}]}
    assert chat(server, body).status_code == 200
    methods = [m for m, _, _ in counting.seen]
    assert "PUT" in methods  # the OSS upload, path-style to the emulator (QWEN_OSS_ENDPOINT)
    assert "/api/v2/files/getstsToken" in counting.paths()


def test_a_dead_proxy_fails_that_account_only(make_proxy, fake):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the proxy refuses
    server = make_proxy(COOKIE=f"token={TOKEN_A} proxy={dead}|||token={TOKEN_B}", POOL_FAILURE_THRESHOLD=1)
    for _ in range(3):
        assert chat(server).status_code == 200  # failed over to the direct account
    accounts = {a["account"]: a for a in health(server)}
    assert accounts["account-1"]["state"] == "down" and accounts["account-1"]["last_error"] == "upstream"
    assert accounts["account-1"]["reason"] == "proxy_unreachable"
    assert accounts["account-2"]["state"] == "healthy"
    assert set(completions_by(fake)) == {TOKEN_B}


@pytest.mark.parametrize("line", ["token=x proxy=socks4://127.0.0.1:1080", "token=x proxy=ftp://h:1",
                                  "token=x proxy=http://host:notaport"])
def test_a_bad_proxy_stops_start_up_with_a_clear_line(fake_server, line):
    from app import create_app
    from config import ConfigError, load_settings
    settings = load_settings({"CONFIG_FILE": "", "COOKIE_FILE": "", "COOKIE": line, "STATE_FILE": "",
                              "TOKEN_STORE_FILE": "", "QWEN_BASE_URL": fake_server.base_url}, environ={})
    with pytest.raises(ConfigError) as caught:
        create_app(settings)
    assert "account 1" in str(caught.value) and "127.0.0.1:1080" not in str(caught.value)


def test_cdn_downloads_go_through_the_account_s_proxy(make_proxy, fake, counting):
    server = make_proxy(COOKIE=f"token={TOKEN_A} proxy={counting.url()}")
    result = server.client().images.generate(prompt="a fox", response_format="b64_json")
    assert base64.b64decode(result.data[0].b64_json) == TINY_PNG
    cdn_path = fake.requests[-1].path  # the generated file, fetched last
    assert cdn_path in counting.paths()


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_a_socks5_proxy_with_credentials_carries_only_its_account(make_proxy, fake, scheme):
    with SocksProxy(auth=("socksuser", "fake-socks-secret")) as socks:
        url = socks.url("socksuser:fake-socks-secret", scheme)
        server = make_proxy(COOKIE=f"token={TOKEN_A} proxy={url}|||token={TOKEN_B}")
        for _ in range(4):
            assert chat(server).status_code == 200
        assert completions_by(fake) == {TOKEN_A: 2, TOKEN_B: 2}
        assert socks.paths().count("/api/v2/chat/completions") == 2
        shown = requests.get(server.url + "/health", timeout=5).text
        assert "fake-socks-secret" not in shown and f"127.0.0.1:{socks.port}" in shown


def test_a_dead_socks_proxy_fails_that_account_only(make_proxy, fake):
    dead = f"socks5://127.0.0.1:{free_port()}"
    server = make_proxy(COOKIE=f"token={TOKEN_A} proxy={dead}|||token={TOKEN_B}", POOL_FAILURE_THRESHOLD=1)
    for _ in range(3):
        assert chat(server).status_code == 200
    accounts = {a["account"]: a for a in health(server)}
    assert accounts["account-1"]["state"] == "down" and accounts["account-1"]["reason"] == "proxy_unreachable"
    assert set(completions_by(fake)) == {TOKEN_B}
