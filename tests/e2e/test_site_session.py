"""The session's lean path to the site (``SiteSession.send_bytes``), over real sockets.

Every turn's calls (``chats/new``, the completion, the ``DELETE``) go through it
instead of ``requests``' own request path, so it must keep what that path gave:
the environment's proxies and NO_PROXY, the cookies the site sets, the same
exceptions for the same failures, and no redirects followed.
"""

from __future__ import annotations

import socket
import threading

import pytest
import requests

from identity_pool import new_session
from tests.fake_qwen import make_jwt
from tests.helpers import API_KEY, CountingProxy, MediaHost, free_port

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
TIMEOUT = (2.0, 2.0)


@pytest.fixture
def host():
    with MediaHost() as media:
        yield media


@pytest.fixture
def counting():
    with CountingProxy() as proxy:
        yield proxy


def ask(server) -> requests.Response:
    """One chat, sent by a client that ignores the environment's proxy (only the service must use it)."""
    client = requests.Session()
    client.trust_env = False
    return client.post(server.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=20)


def without_proxy_settings(monkeypatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_every_call_of_a_turn_goes_through_the_environment_s_proxy(monkeypatch, make_proxy, fake, counting):
    without_proxy_settings(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", counting.url())
    server = make_proxy(COOKIE=f"token={make_jwt('user-env-proxy')}")
    assert ask(server).status_code == 200
    assert {"/api/v2/models/", "/api/v2/chats/new", "/api/v2/chat/completions"} <= set(counting.paths())


def test_no_proxy_keeps_the_site_off_the_environment_s_proxy(monkeypatch, make_proxy, fake, counting):
    without_proxy_settings(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", counting.url())
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = make_proxy(COOKIE=f"token={make_jwt('user-no-proxy')}")
    assert ask(server).status_code == 200
    assert counting.paths() == []
    assert [r.path for r in fake.requests].count("/api/v2/chat/completions") == 1


def test_a_cookie_the_site_sets_is_kept_and_its_new_value_sent_next(host):
    session = new_session(2)
    host.serve("/set", b"{}", content_type="application/json", headers={"Set-Cookie": "acw_tc=first; Path=/"})
    with session.send_bytes("POST", host.url + "/set", {"Accept": "application/json"}, b"{}", TIMEOUT) as resp:
        assert resp.status_code == 200
    assert session.jar_header(host.url) == "acw_tc=first"
    host.serve("/set", b"{}", content_type="application/json", headers={"Set-Cookie": "acw_tc=second; Path=/"})
    session.send_bytes("GET", host.url + "/set", {}, None, TIMEOUT).close()
    assert session.jar_header(host.url) == "acw_tc=second", "a cookie the site replaced is not sent stale"


def test_the_body_arrives_whole_with_its_length(host):
    session = new_session(2)
    host.serve("/echo", b"ok", content_type="text/plain")
    body = "繁體中文 ".encode() * 1000
    with session.send_bytes("POST", host.url + "/echo", {"Content-Type": "application/json"}, body, TIMEOUT) as resp:
        assert resp.content == b"ok"
    path, headers = host.seen[-1]
    assert path == "/echo" and headers["Content-Length"] == str(len(body))
    assert "gzip" in headers["Accept-Encoding"], "compression is asked for, as by requests and every browser"
    assert headers["Content-Type"] == "application/json", "the caller's headers win over the session's"


def test_a_redirect_is_handed_back_not_followed(host):
    session = new_session(2)
    host.serve("/moved", b"", status=302, headers={"Location": host.url + "/elsewhere"})
    with session.send_bytes("GET", host.url + "/moved", {}, None, TIMEOUT) as resp:
        assert resp.status_code == 302 and resp.headers["location"].endswith("/elsewhere")
    assert [path for path, _ in host.seen] == ["/moved"]


def test_a_closed_port_is_requests_connection_error():
    with pytest.raises(requests.ConnectionError) as info:
        new_session(2).send_bytes("GET", f"http://127.0.0.1:{free_port()}/", {}, None, TIMEOUT)
    assert not isinstance(info.value, requests.exceptions.ProxyError)


def test_a_dead_environment_proxy_is_requests_proxy_error(monkeypatch):
    without_proxy_settings(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(requests.exceptions.ProxyError):
        new_session(2).send_bytes("GET", "http://site.invalid/api", {}, None, TIMEOUT)


def test_a_silent_site_is_requests_read_timeout():
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    try:
        with pytest.raises(requests.ReadTimeout):
            new_session(2).send_bytes("GET", f"http://127.0.0.1:{listener.getsockname()[1]}/", {}, None, (2.0, 0.3))
    finally:
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_site_silent_mid_body_is_requests_connection_error(host):
    session = new_session(2)
    host.serve("/cut", b"x" * 100, content_type="text/plain", stall_after=10)
    resp = session.send_bytes("GET", host.url + "/cut", {}, None, (2.0, 0.3))
    with pytest.raises(requests.ConnectionError):  # a read that times out mid-body, as requests reports it
        b"".join(resp.iter_content(chunk_size=None))
    resp.close()


def test_without_a_cookie_header_the_jar_s_cookies_go(host):
    """A caller with no account (the model list) still returns the cookies the site set, as requests did."""
    session = new_session(2)
    host.serve("/set", b"{}", content_type="application/json", headers={"Set-Cookie": "acw_tc=kept; Path=/"})
    session.send_bytes("GET", host.url + "/set", {}, None, TIMEOUT).close()
    session.send_bytes("GET", host.url + "/set", {}, None, TIMEOUT).close()
    session.send_bytes("GET", host.url + "/set", {"Cookie": "token=mine"}, None, TIMEOUT).close()
    assert [headers.get("Cookie") for _, headers in host.seen] == [None, "acw_tc=kept", "token=mine"]
