"""The admin page over real sockets with `requests`: no page without ADMIN_KEY, sign-in with a wrong and a right
key, the cookie's flags, CSRF (a POST without or with a wrong token is refused), logout ending the session,
sign-in throttling, what the page shows (masked) and generated form posts (4xx, never 5xx)."""

from __future__ import annotations

import re
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fake_qwen import make_jwt
from tests.helpers import API_KEY, Gunicorn

ADMIN_KEY = "fake-admin-key-page-0001"
FIRST = make_jwt("user-page-configured")
CHAT = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def admin(make_proxy, tmp_path):
    return make_proxy(COOKIE=f"token={FIRST}", ADMIN_KEY=ADMIN_KEY, STATE_FILE=str(tmp_path / "state.sqlite3"))


def login(server, key: str = ADMIN_KEY) -> requests.Session:
    session = requests.Session()
    resp = session.post(server.url + "/admin/login", data={"key": key}, allow_redirects=False, timeout=10)
    assert resp.status_code == 303, resp.text
    return session


def csrf_of(session: requests.Session, server) -> str:
    page = session.get(server.url + "/admin", timeout=10)
    assert page.status_code == 200 and 'id="accounts"' in page.text
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def test_no_admin_key_no_admin_page(proxy):
    for method, path in (("GET", "/admin"), ("GET", "/admin/"), ("POST", "/admin/login"), ("POST", "/admin/logout"),
                         ("GET", "/admin/static/admin.css"), ("POST", "/admin/accounts")):
        assert requests.request(method, proxy.url + path, data={"key": ""}, timeout=5).status_code == 404


def test_a_wrong_key_is_401_with_the_form_again_and_the_right_one_opens_a_session(admin):
    first = requests.get(admin.url + "/admin", timeout=5)
    assert first.status_code == 200 and 'type="password"' in first.text and 'id="accounts"' not in first.text
    assert first.headers["Cache-Control"] == "no-store" and "frame-ancestors 'none'" in first.headers[
        "Content-Security-Policy"]
    wrong = requests.post(admin.url + "/admin/login", data={"key": "not-the-key"}, allow_redirects=False, timeout=5)
    assert wrong.status_code == 401 and 'type="password"' in wrong.text and "not the admin key" in wrong.text
    assert "Set-Cookie" not in wrong.headers
    right = requests.post(admin.url + "/admin/login", data={"key": ADMIN_KEY}, allow_redirects=False, timeout=5)
    assert right.status_code == 303 and right.headers["Location"].endswith("/admin")
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http here: a Secure cookie would never come back
    assert ADMIN_KEY not in cookie
    behind_tls = requests.post(admin.url + "/admin/login", data={"key": ADMIN_KEY}, allow_redirects=False,
                               headers={"X-Forwarded-Proto": "https"}, timeout=5)
    assert "Secure" in behind_tls.headers["Set-Cookie"]  # nginx terminates TLS: the cookie is Secure


def test_the_page_shows_accounts_masked_with_their_proxy_host_only(admin):
    session = login(admin)
    token = session.post(admin.url + "/admin/accounts", timeout=10, allow_redirects=False,
                         data={"csrf": csrf_of(session, admin), "cookie": make_jwt("user-page-added"),
                               "proxy": "http://someone:fake-proxy-secret@127.0.0.1:9"})
    assert token.status_code == 303 and token.headers["Location"].endswith("/admin?done=added")
    page = session.get(admin.url + token.headers["Location"], timeout=10).text
    assert page.count("<tr data-account=") == 2 and "Account added." in page
    assert "127.0.0.1:9" in page and "fake-proxy-secret" not in page and "someone" not in page
    assert FIRST not in page and make_jwt("user-page-added") not in page and ADMIN_KEY not in page
    assert 'id="models-source"' in page and "<svg" in page and "<script" not in page


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_a_post_without_the_csrf_token_is_refused(admin, token):
    session = login(admin)
    csrf_of(session, admin)
    data = {"cookie": make_jwt("user-page-csrf")} if token is None else {"cookie": make_jwt("user-page-csrf"),
                                                                          "csrf": token}
    for path in ("/admin/accounts", "/admin/logout"):
        resp = session.post(admin.url + path, data=data, allow_redirects=False, timeout=10)
        assert resp.status_code == 403
    assert session.get(admin.url + "/admin", timeout=10).text.count("<tr data-account=") == 1  # nothing added


def test_a_post_from_another_site_is_refused_even_with_the_token(admin):
    session = login(admin)
    csrf = csrf_of(session, admin)
    resp = session.post(admin.url + "/admin/accounts", data={"csrf": csrf, "cookie": make_jwt("user-page-x")},
                        headers={"Origin": "https://evil.example"}, allow_redirects=False, timeout=10)
    assert resp.status_code == 403
    login_elsewhere = requests.post(admin.url + "/admin/login", data={"key": ADMIN_KEY},
                                    headers={"Origin": "https://evil.example"}, allow_redirects=False, timeout=10)
    assert login_elsewhere.status_code == 403


def test_logout_ends_the_session_for_that_cookie(admin):
    session = login(admin)
    other = login(admin)  # another browser: its own session, untouched
    csrf = csrf_of(session, admin)
    stolen = dict(session.cookies)
    out = session.post(admin.url + "/admin/logout", data={"csrf": csrf}, allow_redirects=False, timeout=10)
    assert out.status_code == 303
    replay = requests.get(admin.url + "/admin", cookies=stolen, timeout=10)
    assert replay.status_code == 200 and 'id="accounts"' not in replay.text and 'type="password"' in replay.text
    post = requests.post(admin.url + "/admin/accounts", cookies=stolen, data={"csrf": csrf, "cookie": "x"},
                         allow_redirects=False, timeout=10)
    assert post.status_code == 403
    assert 'id="accounts"' in other.get(admin.url + "/admin", timeout=10).text


def test_sessions_are_shared_by_every_app_on_the_same_store(admin, make_proxy, tmp_path):
    second = make_proxy(COOKIE=f"token={FIRST}", ADMIN_KEY=ADMIN_KEY, STATE_FILE=str(tmp_path / "state.sqlite3"))
    session = login(admin)
    csrf = csrf_of(session, admin)
    cookies = dict(session.cookies)
    assert 'id="accounts"' in requests.get(second.url + "/admin", cookies=cookies, timeout=10).text
    requests.post(second.url + "/admin/logout", cookies=cookies, data={"csrf": csrf}, timeout=10)
    assert 'id="accounts"' not in requests.get(admin.url + "/admin", cookies=cookies, timeout=10).text


def pages_by_worker(server, cookies: dict, marker: str) -> dict[str, bool]:
    """GET /admin on fresh connections until both workers answered (bounded): worker -> page shows ``marker``."""
    seen: dict[str, bool] = {}
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        text = requests.get(server.url + "/admin", cookies=cookies, timeout=10).text
        worker = re.search(r'id="worker">(\d+)<', text).group(1)
        seen[worker] = seen.get(worker, True) and marker in text
    assert len(seen) == 2, "only one worker answered"
    return seen


def test_every_gunicorn_worker_knows_the_session_and_logout_ends_it_in_all(fake_server, tmp_path):
    gunicorn = Gunicorn(fake_server.base_url, tmp_path, 2, ADMIN_KEY=ADMIN_KEY, AUTO_REFRESH_TOKEN="false",
                        COOKIE=f"token={FIRST}").start()
    try:
        session = login(gunicorn)
        cookies = dict(session.cookies)
        assert set(pages_by_worker(gunicorn, cookies, 'id="accounts"').values()) == {True}
        csrf = csrf_of(session, gunicorn)
        assert session.post(gunicorn.url + "/admin/logout", data={"csrf": csrf}, allow_redirects=False,
                            timeout=10).status_code == 303
        assert set(pages_by_worker(gunicorn, cookies, 'type="password"').values()) == {True}
    finally:
        gunicorn.stop()


def test_repeated_wrong_keys_are_limited(admin):
    codes = [requests.post(admin.url + "/admin/login", data={"key": f"guess-{i}"}, allow_redirects=False,
                           timeout=5).status_code for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    limited = requests.post(admin.url + "/admin/login", data={"key": ADMIN_KEY}, allow_redirects=False, timeout=5)
    assert limited.status_code == 429 and "Set-Cookie" not in limited.headers  # even the right key waits


def test_actions_redirect_back_and_change_the_account(admin):
    session = login(admin)
    csrf = csrf_of(session, admin)
    account = re.search(r'data-account="([^"]+)"', session.get(admin.url + "/admin", timeout=10).text).group(1)
    for action, state in (("disable", "disabled"), ("enable", "healthy")):
        resp = session.post(f"{admin.url}/admin/accounts/{account}/{action}", data={"csrf": csrf},
                            allow_redirects=False, timeout=10)
        assert resp.status_code == 303
        assert f'data-account="{account}" data-state="{state}"' in session.get(admin.url + "/admin", timeout=10).text
    unknown = session.post(f"{admin.url}/admin/accounts/{account}/explode", data={"csrf": csrf}, timeout=10)
    assert unknown.status_code == 404 and 'id="accounts"' in unknown.text
    gone = session.post(f"{admin.url}/admin/accounts/{account}/remove", data={"csrf": csrf}, allow_redirects=False,
                        timeout=10)
    assert gone.status_code == 303 and "data-account=" not in session.get(admin.url + "/admin", timeout=10).text


def test_a_failed_chat_shows_among_recent_errors(admin, fake):
    session = login(admin)
    resp = requests.post(admin.url + "/v1/chat/completions", json={**CHAT, "messages": "not a list"},
                         headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert resp.status_code == 400
    page = session.get(admin.url + "/admin", timeout=10).text
    assert 'id="errors"' in page and 'data-label="Class">client</td><td data-label="Status">400</td>' in page


texts = st.text(max_size=300)
forms = st.dictionaries(st.sampled_from(["csrf", "cookie", "proxy", "key", "do", "x"]), texts, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/admin/login", "/admin/logout", "/admin/accounts", "/admin/accounts/abc/disable",
                             "/admin/accounts/%s/enable", "/admin/accounts/%s/explode", "/admin/x"]),
       form=forms, with_csrf=st.booleans())
def test_generated_form_posts_get_4xx_never_5xx(admin, path, form, with_csrf):
    session = getattr(admin, "_page_session", None)
    if session is None:
        session = admin._page_session = login(admin)
        admin._page_csrf = csrf_of(session, admin)
        admin._page_id = re.search(r'data-account="([^"]+)"', session.get(admin.url + "/admin").text).group(1)
    data = dict(form)
    if with_csrf and path not in ("/admin/logout",):
        data["csrf"] = admin._page_csrf
    resp = session.post(admin.url + path.replace("%s", admin._page_id), data=data, allow_redirects=False, timeout=20)
    assert resp.status_code < 500, resp.text
    assert resp.status_code == 303 or 400 <= resp.status_code < 500
