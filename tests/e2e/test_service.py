"""The service around chat: models, health, auth modes, HTTP-level errors, CORS, secrets and config."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import requests

from config import ConfigError, load_settings
from identity_pool import Identity
from tests.helpers import API_KEY, COOKIE, TOKEN
from tests.fake_qwen import make_jwt

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}


# ----------------------------------------------------------------- models


def test_models_list_with_variants(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "qwen3.7-plus"
    assert {"qwen3.7-plus-thinking", "qwen3.7-plus-fast", "qwen3.7-plus-search", "qwen3.7-plus-thinking-search"} <= set(ids)
    assert "qwen3.5-omni-plus" in ids and "qwen3.5-omni-plus-thinking" not in ids


def test_model_by_id(client):
    assert client.models.retrieve("qwen3.7-plus-thinking").id == "qwen3.7-plus-thinking"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_models_fall_back_to_the_v1_list(make_proxy, fake):
    fake.configure(models_v2_available=False)
    ids = [m.id for m in make_proxy().client().models.list()]
    assert "qwen3.7-plus" in ids and fake.requests_to("/api/models")


def test_builtin_models_when_the_site_is_down(make_proxy, fake):
    fake.configure(fault="http_503", fault_endpoint="models")
    server = make_proxy()
    ids = [m.id for m in server.client().models.list()]
    assert "qwen3.7-plus" in ids
    assert requests.get(server.url + "/health", timeout=5).json()["models"]["source"] == "builtin"
    resp = requests.get(server.url + "/v1/models", headers=AUTH, timeout=5)
    assert resp.headers["X-Models-Source"] == "builtin"


def test_a_large_model_list_is_read_whole(make_proxy, fake):
    from tests.fake_qwen import DEFAULT_MODELS
    models = []
    for n in range(60):
        model = json.loads(json.dumps(DEFAULT_MODELS[0]))
        model["id"] = model["info"]["id"] = f"qwen-many-{n}"
        model["info"]["meta"]["description"] = "A long description. " * 100
        models.append(model)
    fake.configure(models=models)
    resp = requests.get(make_proxy().url + "/v1/models", headers=AUTH, timeout=10)
    assert resp.headers["X-Models-Source"] == "upstream"
    assert {m["id"] for m in resp.json()["data"]} >= {f"qwen-many-{n}" for n in range(60)}


def test_model_list_is_cached(client, fake):
    client.models.list()
    client.models.list()
    assert len(fake.requests_to("/api/v2/models/")) <= 1


def test_unknown_model_lists_valid_ones(client, fake):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="qwen-nonexistent", messages=CHAT["messages"])
    assert info.value.code == "model_not_found" and "qwen3.7-plus" in info.value.message
    assert not fake.requests_to("/api/v2/chats/new")


# ----------------------------------------------------------------- auth


def test_wrong_or_missing_key(proxy, fake):
    with pytest.raises(openai.AuthenticationError) as info:
        proxy.client(api_key="sk-wrong").chat.completions.create(**CHAT)
    assert info.value.body["message"] == "Invalid API key."
    resp = requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=5)
    assert resp.status_code == 401 and "Missing API key" in resp.json()["error"]["message"]


def test_x_api_key_header(proxy, fake):
    resp = requests.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"x-api-key": API_KEY}, timeout=10)
    assert resp.status_code == 200


def test_several_keys(make_proxy, fake):
    server = make_proxy(API_KEY="sk-one,sk-two")
    assert server.client(api_key="sk-two").chat.completions.create(**CHAT).choices[0].message.content


def test_open_when_no_key_is_set(make_proxy, fake):
    server = make_proxy(API_KEY="")
    assert requests.post(server.url + "/v1/chat/completions", json=CHAT, timeout=10).status_code == 200
    assert requests.get(server.url + "/health", timeout=5).json()["auth"] == "open"


def test_client_mode_uses_the_callers_credentials(make_proxy, fake):
    server = make_proxy(SERVER_MODE=False, COOKIE="")
    own = make_jwt("client-user-42")
    client = server.client(api_key=f"{API_KEY};{own};ssxmod_itna=abc")
    assert client.chat.completions.create(**CHAT).choices[0].message.content
    cookie = fake.requests_to("/api/v2/chat/completions")[-1].headers["Cookie"]
    assert f"token={own}" in cookie and "ssxmod_itna=abc" in cookie
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key=f"sk-wrong;{own};").chat.completions.create(**CHAT)


def test_client_mode_sessions_are_closed_after_their_chat_is_deleted(make_proxy, fake, monkeypatch):
    opened = []
    real_session = Identity.session

    def tracking(self):
        if self.ephemeral:
            opened.append(self)
        return real_session.fget(self)

    monkeypatch.setattr(Identity, "session", property(tracking))
    server = make_proxy(SERVER_MODE=False, COOKIE="", CONTINUE_CHATS=False)
    client = server.client(api_key=f"{API_KEY};{make_jwt('client-user-42')};")
    for _ in range(3):
        assert client.chat.completions.create(**CHAT).choices[0].message.content
    assert server.app.extensions["qwen2openai"].conversations.janitor.wait_idle(5)
    assert len(fake.requests_to("/api/v2/chats/new")) == 3 and len(fake.chats) == 0  # each chat deleted
    assert opened and all(identity._session is None for identity in opened)


def test_client_mode_token_refused_is_401(make_proxy, fake):
    server = make_proxy(SERVER_MODE=False, COOKIE="")
    expired = make_jwt("client-user-42", exp=1_000_000)
    with pytest.raises(openai.AuthenticationError) as info:
        server.client(api_key=f"{API_KEY};{expired};").chat.completions.create(**CHAT)
    assert "token" in info.value.message


def test_cookie_without_token_is_exchanged_for_one(make_proxy, fake):
    fake.sessions["browser-session-1"] = TOKEN
    server = make_proxy(COOKIE="qwen_session=browser-session-1")
    assert server.client().chat.completions.create(**CHAT).choices[0].message.content
    assert fake.requests_to("/api/v1/auths/")
    assert f"token={TOKEN}" in fake.requests_to("/api/v2/chat/completions")[-1].headers["Cookie"]


def test_no_account_configured(make_proxy, fake):
    server = make_proxy(COOKIE="")
    with pytest.raises(openai.InternalServerError) as info:
        server.client().chat.completions.create(**CHAT)
    assert info.value.status_code == 503 and "cookie.txt" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"
    assert requests.get(server.url + "/health", timeout=5).json()["status"] == "no_account"


# ----------------------------------------------------------------- HTTP-level errors


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "words"), [
    ("POST", "/v1/chat/completions", {"data": "{not json"}, 400, "not valid JSON"),
    ("POST", "/v1/chat/completions", {"data": ""}, 400, "empty"),
    ("POST", "/v1/chat/completions", {"json": {"model": "qwen3.7-plus"}}, 400, "messages"),
    ("POST", "/v1/chat/completions", {"json": {**CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]}}, 400, "image_url"),
    ("GET", "/v1/chat/completions", {}, 405, "POST"),
    ("GET", "/v1/nothing-here", {}, 404, "Unknown route"),
    ("POST", "/v1/chat/completions", {"data": "x" * 30_000}, 413, "MAX_REQUEST_MB"),
])
def test_http_errors_are_openai_shaped(make_proxy, fake, method, path, kwargs, status, words):
    server = make_proxy(MAX_REQUEST_MB=0.02)
    resp = requests.request(method, server.url + path, headers={**AUTH, "Content-Type": "application/json"},
                            timeout=5, **kwargs)
    assert resp.status_code == status and resp.headers["Content-Type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"]


def test_cors_preflight(proxy):
    resp = requests.options(proxy.url + "/v1/chat/completions", timeout=5, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] in {"*", "https://app.example"}
    assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()


def test_index_and_health(proxy):
    index = requests.get(proxy.url + "/", timeout=5).json()
    assert index["name"] == "qwen2openai" and "POST /v1/chat/completions" in index["endpoints"]
    health = requests.get(proxy.url + "/health", timeout=5).json()
    assert health["status"] == "ok" and health["auth"] == "api_key"
    (account,) = health["accounts"]["accounts"]
    assert account["id"] == "fake-u…" and account["token_valid_for_s"] > 86400


# ----------------------------------------------------------------- secrets


def test_secrets_never_reach_logs_or_responses(make_proxy, fake, caplog):
    caplog.set_level(logging.DEBUG)
    server = make_proxy(DEBUG_MODE=True)
    bodies = [requests.get(server.url + "/health", timeout=5).text]
    for fault in (None, "unauthorized", "http_401", "x5sec"):
        fake.configure(fault=fault)
        bodies.append(requests.post(server.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=10).text)
    bodies.append(requests.post(server.url + "/v1/chat/completions", json=CHAT, timeout=10,
                                headers={"Authorization": "Bearer sk-wrong-guess"}).text)
    logging.getLogger("qwen_client").info("sending Cookie: %s with Bearer %s", COOKIE, TOKEN)
    text = caplog.text + "".join(bodies)
    assert caplog.records, "the test must see log output"
    for secret in (TOKEN, API_KEY, "fake-itna-cookie-value", TOKEN.split(".")[1]):
        assert secret not in text


@pytest.mark.parametrize("name", ["qwen_client.conversations", "routes.turns", "transform.answer", "some.library"])
def test_secrets_are_masked_for_every_logger_not_a_list_of_names(make_proxy, caplog, name):
    """Redaction sits where every record passes (the root logger's handlers), whichever module logs."""
    caplog.set_level(logging.DEBUG)
    make_proxy()
    logging.getLogger(name).warning("cookie %s key %s", COOKIE, API_KEY)
    assert caplog.records and "***" in caplog.text
    for secret in (TOKEN, API_KEY, "fake-itna-cookie-value"):
        assert secret not in caplog.text


# ----------------------------------------------------------------- configuration


def test_layered_configuration(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"SERVER_PORT": 9001, "API_KEY": "from-file", "DEBUG_MODE": "true"}))
    cookies = tmp_path / "cookie.txt"
    cookies.write_text("# my accounts\n\ntoken=aaa; x=1\ntoken=bbb\n")
    settings = load_settings({"API_KEY": "k1,k2"}, environ={
        "CONFIG_FILE": str(config), "COOKIE_FILE": str(cookies), "PORT": "9002", "COOKIE": "token=ccc|||token=aaa; x=1"})
    assert settings.PORT == 9002 and settings.API_KEY == ("k1", "k2") and settings.DEBUG_MODE is True
    assert settings.COOKIE == ("token=ccc", "token=aaa; x=1", "token=bbb")


@pytest.mark.parametrize(("key", "value"), [
    ("PORT", "eighty"), ("PORT", "70000"), ("SERVER_MODE", "maybe"), ("QWEN_BASE_URL", "chat.qwen.ai"),
    ("READ_TIMEOUT", "-1"), ("QWEN_OSS_ENDPOINT", "127.0.0.1:9000"), ("ALLOW_PRIVATE_URLS", "sometimes"),
])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError) as info:
        load_settings({key: value, "CONFIG_FILE": ""}, environ={})
    assert str(info.value).startswith(key) and "\n" not in str(info.value)


def test_media_settings():
    defaults = load_settings({"CONFIG_FILE": ""}, environ={})
    assert defaults.QWEN_OSS_ENDPOINT == "" and defaults.ALLOW_PRIVATE_URLS is False
    settings = load_settings({"CONFIG_FILE": ""}, environ={
        "QWEN_OSS_ENDPOINT": "http://127.0.0.1:9000/", "ALLOW_PRIVATE_URLS": "true"})
    assert settings.QWEN_OSS_ENDPOINT == "http://127.0.0.1:9000" and settings.ALLOW_PRIVATE_URLS is True


def test_start_up_with_a_bad_value_prints_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "app.py")], capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "PORT": "eighty", "CONFIG_FILE": ""}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "configuration error: PORT: expected a whole number (got 'eighty')"


def test_gunicorn_style_import_with_a_bad_value_prints_one_line():
    code = "import app; app.app"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "SERVER_MODE": "perhaps", "CONFIG_FILE": ""})
    assert result.returncode == 2 and result.stderr.strip().startswith("configuration error: SERVER_MODE")


def test_import_does_no_work():
    code = "import threading, app; assert threading.active_count() == 1; assert 'app' not in vars(app)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=30)


def _run_app(port: int, cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "app.py")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, env={"PATH": "/usr/bin:/bin", "CONFIG_FILE": "", "COOKIE_FILE": "",
                                                     "TOKEN_STORE_FILE": "", "AUTO_REFRESH_TOKEN": "false",
                                                     "HOST": "127.0.0.1", "PORT": str(port), **env})


def test_a_busy_port_names_the_setting_to_change(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:  # a real listener holds the port
        port = taken.getsockname()[1]
        process = _run_app(port, tmp_path)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0] and "PORT" in lines[0] and "HOST" in lines[0]
    assert "Either identify and stop" not in err and "Traceback" not in err


def test_python_app_py_serves_on_the_port_it_is_given(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    process = _run_app(port, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "python app.py never answered"
                time.sleep(0.1)
        assert health.status_code == 200 and health.json()["status"] == "no_account"
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=15)
    assert process.returncode == 0


def test_an_address_not_of_this_machine_names_host_and_port(tmp_path):
    process = _run_app(8000, tmp_path, HOST="192.0.2.1")  # TEST-NET-1: never a local address
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert err.strip().splitlines() == [err.strip()] and "192.0.2.1:8000" in err and "HOST and PORT" in err
