"""Chats made ahead of need (issue 12, a leaner turn): a new conversation's first byte waits for one site call.

Over real sockets against the emulator: the spare is made after a new chat's
turn is accepted, the next new conversation of that account, model and chat type
posts straight into it, an unused spare is deleted upstream by the sweep, and a
spare the site lost is replaced without the client noticing.
"""

from __future__ import annotations

import time

import requests

from tests.fake_qwen import make_jwt
from tests.helpers import API_KEY, Gunicorn, ProxyServer, chats_used, spare_chats

CHATS_NEW, COMPLETIONS = "/api/v2/chats/new", "/api/v2/chat/completions"
MODEL = "qwen3.7-plus"


def ask(server, content: str, model: str = MODEL) -> str:
    reply = server.client().chat.completions.create(model=model, messages=[{"role": "user", "content": content}])
    return reply.choices[0].message.content


def test_the_next_new_conversation_posts_into_a_chat_made_before_it_came(make_proxy, fake):
    server = make_proxy()
    ask(server, "first")
    [spare] = spare_chats(server)
    made_before = len(fake.requests_to(CHATS_NEW))
    ask(server, "second")
    second = fake.requests_to(COMPLETIONS)[-1]
    assert second.query["chat_id"] == spare and second.json["chat_id"] == spare
    assert second.json["parent_id"] is None, "a fresh chat's first turn"
    assert fake.requests_to(CHATS_NEW)[made_before - 1].json["models"] == [MODEL]
    [after] = spare_chats(server)
    assert after != spare and len(fake.requests_to(CHATS_NEW)) == made_before + 1, "one new spare, after the turn"


def test_a_spare_serves_only_its_model(make_proxy, fake):
    server = make_proxy()
    ask(server, "first")
    [spare] = spare_chats(server)
    ask(server, "other model", model="qwen3.8-max")
    assert fake.requests_to(COMPLETIONS)[-1].query["chat_id"] != spare
    assert spare in spare_chats(server) and len(spare_chats(server)) == 2


def test_an_unused_spare_is_deleted_upstream_by_the_sweep(make_proxy, fake):
    server = make_proxy(CHAT_TTL=1.0)  # sweeps every 0.1 s
    server.app.extensions["qwen2openai"].conversations.spares.ttl = 0.5
    ask(server, "first")
    [spare] = spare_chats(server)
    assert fake.wait_request(f"/api/v2/chats/{spare}", method="DELETE", timeout=8), "an idle spare is not left behind"
    assert spare not in fake.chats
    assert ask(server, "later") and fake.requests_to(COMPLETIONS)[-1].query["chat_id"] != spare


def test_a_spare_the_site_lost_is_replaced_without_the_client_noticing(make_proxy, fake, fake_server):
    server = make_proxy()
    ask(server, "first")
    [spare] = spare_chats(server)
    site = {"Cookie": f"token={make_jwt('fake-user-0001')}", "source": "web"}
    assert requests.delete(f"{fake_server.base_url}/api/v2/chats/{spare}", headers=site, timeout=5).json()["success"]
    assert ask(server, "second")
    tried, answered = [r.query["chat_id"] for r in fake.requests_to(COMPLETIONS)[-2:]]
    assert tried == spare and answered != spare and answered in fake.chats


def test_shutdown_deletes_the_spares(fake, fake_server):
    with ProxyServer(fake_server.base_url) as server:
        ask(server, "first")
        [spare] = spare_chats(server)
    assert fake.requests_to(f"/api/v2/chats/{spare}", method="DELETE"), "closing the app deletes its spares"


def test_no_spares_when_switched_off(make_proxy, fake):
    server = make_proxy(SPARE_CHATS=False)
    for n in range(2):
        ask(server, f"conversation {n}")
    assert len(fake.requests_to(CHATS_NEW)) == 2 and spare_chats(server) == set()


def test_no_spares_on_a_caller_s_own_account(make_proxy, fake):
    server = make_proxy(SERVER_MODE=False, COOKIE="")
    own = make_jwt("client-user-7")
    client = server.client(api_key=f"{API_KEY};{own};")
    for n in range(2):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"conversation {n}"}])
    assert spare_chats(server) == set(), "a caller's own account is not ours to keep chats on"
    assert len(fake.requests_to(CHATS_NEW)) == 2 and len(chats_used(fake)) == 2


def test_a_gunicorn_worker_that_stops_deletes_its_spares(fake, fake_server, tmp_path):
    server = Gunicorn(fake_server.base_url, tmp_path, 1, AUTO_REFRESH_TOKEN="false").start()
    try:
        reply = requests.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                              json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=20)
        assert reply.status_code == 200
        assert fake.wait_request(CHATS_NEW, timeout=5)
        deadline = time.monotonic() + 10
        while len(fake.requests_to(CHATS_NEW)) < 2 and time.monotonic() < deadline:  # the spare, made after
            time.sleep(0.05)
        assert len(fake.requests_to(CHATS_NEW)) == 2
    finally:
        server.stop()  # SIGINT: gunicorn's quick stop, which still runs worker_exit
    deleted = [r.path.rsplit("/", 1)[1] for r in fake.requests if r.method == "DELETE"]
    assert len(deleted) == 1, "the stopped worker deleted its spare"
    assert set(fake.chats) == set(chats_used(fake)) and deleted[0] not in chats_used(fake), \
        "the conversation's chat stays: it is in the shared state, continuable after a restart"
