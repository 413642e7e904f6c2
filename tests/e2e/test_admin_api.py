"""The admin API over real sockets: its key, adding each kind of account, disable/enable/refresh/delete,
persistence across a restart, agreement across gunicorn workers, and generated bodies (4xx, never 5xx)."""

from __future__ import annotations

import os
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fake_qwen import make_jwt
from tests.helpers import API_KEY, Gunicorn

ADMIN_KEY = "fake-admin-key-0001"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
FIRST = make_jwt("user-configured")


def accounts(server) -> list[dict]:
    resp = requests.get(server.url + "/admin/api/accounts", headers=ADMIN, timeout=10)
    assert resp.status_code == 200
    return resp.json()["data"]


def add(server, line: str, proxy: str | None = None) -> requests.Response:
    body = {"cookie": line} if proxy is None else {"cookie": line, "proxy": proxy}
    return requests.post(server.url + "/admin/api/accounts", json=body, headers=ADMIN, timeout=20)


def act(server, account: str, action: str) -> requests.Response:
    return requests.post(f"{server.url}/admin/api/accounts/{account}/{action}", headers=ADMIN, timeout=20)


def chat(server) -> requests.Response:
    return requests.post(server.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=20)


def last_token(fake) -> str:
    return [r.cookies.get("token", "") for r in fake.requests if r.path == "/api/v2/chat/completions"][-1]


@pytest.fixture
def admin(make_proxy, tmp_path):
    return make_proxy(COOKIE=f"token={FIRST}", ADMIN_KEY=ADMIN_KEY, STATE_FILE=str(tmp_path / "state.sqlite3"))


def test_no_admin_key_no_admin_api(proxy):
    for method in ("GET", "POST", "DELETE", "PUT"):
        resp = requests.request(method, proxy.url + "/admin/api/accounts", headers=ADMIN, timeout=5)
        assert resp.status_code == 404 and resp.json()["error"]


@pytest.mark.parametrize("given_header", [None, "Bearer wrong-key", f"Basic {ADMIN_KEY}", ADMIN_KEY, "Bearer "])
def test_the_admin_key_is_required(admin, given_header):
    headers = {"Authorization": given_header} if given_header is not None else {}
    resp = requests.get(admin.url + "/admin/api/accounts", headers=headers, timeout=5)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_admin_key"
    assert ADMIN_KEY not in resp.text
    assert requests.get(admin.url + "/admin/api/accounts", headers={"Authorization": f"Bearer {API_KEY}"},
                        timeout=5).status_code == 401  # a client key is not the admin key


def test_add_a_cookie_a_token_and_a_password_account(admin, fake):
    fake.add_account("dora@example.com", "fake-dora-pw")
    cookie, token = make_jwt("user-cookie"), make_jwt("user-token")
    answers = [add(admin, f"token={cookie}; ssxmod_itna=x"), add(admin, token),
               add(admin, "dora@example.com:fake-dora-pw")]
    assert [a.status_code for a in answers] == [201, 201, 201]
    ids = [a.json()["id"] for a in answers]
    assert [a.json()["source"] for a in answers] == ["cookie", "token", "password"]
    listed = {a["id"]: a for a in accounts(admin)}
    assert set(ids) <= set(listed) and len(listed) == 4
    for a in answers:  # ids are masked: never the credential
        assert a.json()["id"] not in (cookie, token) and len(a.json()["id"]) == 12
    used = set()
    for _ in range(4):  # the next turns go round-robin over all four
        assert chat(admin).status_code == 200
        used.add(last_token(fake))
    assert {cookie, token, FIRST} <= used and len(used) == 4
    assert add(admin, token).status_code == 200  # the same credential again: no second account
    assert len(accounts(admin)) == 4


def test_add_with_a_proxy_and_bad_bodies(admin, fake):
    good = add(admin, make_jwt("user-proxied"), proxy="http://user:fake-proxy-pw@127.0.0.1:3128")
    assert good.status_code == 201
    listed = next(a for a in accounts(admin) if a["id"] == good.json()["id"])
    assert listed["proxy"] == "127.0.0.1:3128"
    for body in ({}, {"cookie": ""}, {"cookie": 5}, {"cookie": "no-equals-no-jwt"}, [1],
                 {"cookie": "token=x", "proxy": "socks4://127.0.0.1:1"}, {"cookie": "token=x", "proxy": 3}):
        resp = requests.post(admin.url + "/admin/api/accounts", json=body, headers=ADMIN, timeout=5)
        assert resp.status_code == 400 and resp.json()["error"]["message"]
    assert "fake-proxy-pw" not in requests.get(admin.url + "/admin/api/accounts", headers=ADMIN, timeout=5).text


def test_disable_enable_refresh_delete(admin, fake):
    added = add(admin, f"token={make_jwt('user-second')}").json()["id"]
    first = next(a["id"] for a in accounts(admin) if a["id"] != added)
    assert act(admin, first, "disable").json()["disabled"] is True
    for _ in range(3):
        assert chat(admin).status_code == 200
        assert last_token(fake) != FIRST  # a disabled account gets no turns
    assert next(a for a in accounts(admin) if a["id"] == first)["disabled"] is True
    assert act(admin, first, "enable").json()["disabled"] is False
    tokens = set()
    for _ in range(2):
        chat(admin)
        tokens.add(last_token(fake))
    assert FIRST in tokens
    refreshed = act(admin, first, "refresh")
    assert refreshed.status_code == 200 and refreshed.json()["id"] == first
    assert requests.delete(f"{admin.url}/admin/api/accounts/{added}", headers=ADMIN, timeout=5).json()["deleted"]
    assert [a["id"] for a in accounts(admin)] == [first]
    assert requests.delete(f"{admin.url}/admin/api/accounts/{added}", headers=ADMIN, timeout=5).status_code == 404
    assert act(admin, first, "explode").status_code == 404


def test_changes_survive_a_restart_without_touching_the_files(make_proxy, fake, tmp_path):
    cookie_file = tmp_path / "cookie.txt"
    cookie_file.write_text(f"token={FIRST}\n")
    config = {"COOKIE_FILE": str(cookie_file), "COOKIE": "", "ADMIN_KEY": ADMIN_KEY,
              "STATE_FILE": str(tmp_path / "data" / "state.sqlite3")}
    first = make_proxy(**config)
    added = add(first, f"token={make_jwt('user-added')}").json()["id"]
    configured = next(a["id"] for a in accounts(first) if a["id"] != added)
    act(first, configured, "disable")
    first.__exit__(None, None, None)
    again = make_proxy(**config)
    listed = {a["id"]: a for a in accounts(again)}
    assert set(listed) == {added, configured} and listed[configured]["disabled"] is True
    assert cookie_file.read_text() == f"token={FIRST}\n"  # never rewritten


def test_data_dir_holds_what_the_service_writes(tmp_path):
    from config import load_settings
    settings = load_settings({"CONFIG_FILE": "", "DATA_DIR": str(tmp_path / "d")}, environ={})
    assert settings.STATE_FILE == str(tmp_path / "d" / "state.sqlite3")
    assert settings.TOKEN_STORE_FILE == str(tmp_path / "d" / "tokens.json")
    kept = load_settings({"CONFIG_FILE": "", "DATA_DIR": str(tmp_path / "d"), "STATE_FILE": "/x/s.db"}, environ={})
    assert kept.STATE_FILE == "/x/s.db" and kept.TOKEN_STORE_FILE == str(tmp_path / "d" / "tokens.json")


def test_workers_agree_and_sign_in_once(fake_server, fake, tmp_path):
    """Two gunicorn workers: an account added or disabled through one is served or skipped by both."""
    fake.add_account("erin@example.com", "fake-erin-pw")
    gunicorn = Gunicorn(fake_server.base_url, tmp_path, 2, ADMIN_KEY=ADMIN_KEY, AUTO_REFRESH_TOKEN="false",
                        COOKIE=f"token={FIRST}").start()
    try:
        added = add(gunicorn, "erin@example.com:fake-erin-pw").json()["id"]
        seen: dict[int, set[str]] = {}
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:  # ask until both workers have answered
            health = gunicorn.health()
            seen[health["worker"]] = {a["key"] for a in health["accounts"]["accounts"]}
        assert len(seen) == 2 and all(added in keys for keys in seen.values())
        codes = [chat(gunicorn).status_code for _ in range(8)]
        assert codes == [200] * 8
        signins = [r for r in fake.requests if r.path == "/api/v2/auths/signin"]
        assert len(signins) == 1  # signed in once for both workers, under the store's lock
        requests.post(f"{gunicorn.url}/admin/api/accounts/{added}/disable", headers=ADMIN, timeout=10)
        before = len([r for r in fake.requests if r.path == "/api/v2/chat/completions"])
        for _ in range(6):
            assert chat(gunicorn).status_code == 200
        tokens = [r.cookies.get("token") for r in fake.requests if r.path == "/api/v2/chat/completions"][before:]
        assert set(tokens) == {FIRST}  # neither worker gives the disabled account a turn
    finally:
        gunicorn.stop()


BODIES = st.one_of(
    st.dictionaries(st.sampled_from(["cookie", "proxy", "x"]),
                    st.one_of(st.none(), st.integers(), st.text(max_size=40), st.lists(st.text(max_size=3))),
                    max_size=3),
    st.lists(st.integers(), max_size=3), st.text(max_size=20), st.integers(),
)


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "30")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=BODIES, account=st.text(min_size=1, max_size=30).filter(lambda s: "/" not in s and s not in (".", "..")))
def test_generated_bodies_get_4xx_never_5xx(admin, body, account):
    resp = requests.post(admin.url + "/admin/api/accounts", json=body, headers=ADMIN, timeout=10)
    assert resp.status_code < 500 and ("error" in resp.json() or "id" in resp.json())
    for method, path in (("DELETE", ""), ("POST", "/disable"), ("POST", "/refresh")):
        resp = requests.request(method, f"{admin.url}/admin/api/accounts/{requests.utils.quote(account)}{path}",
                                headers=ADMIN, timeout=10)
        assert resp.status_code < 500
