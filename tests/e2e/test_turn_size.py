"""Long text and the site's size captcha (§11, §14): the guard counts bytes of the body, and a refusal we
caused ourselves never takes the account down."""

from __future__ import annotations

import openai
import pytest
import requests

from qwen_client import conversations as cv
from qwen_client.wire import SIZE_CAPTCHA_BYTES

MODEL = "qwen3.7-plus"
COMPLETIONS = "/api/v2/chat/completions"


def account(server) -> dict:
    [only] = requests.get(server.url + "/health", timeout=5).json()["accounts"]["accounts"]
    return only


def document_of(fake) -> str:
    [stored] = [o for o in fake.objects.values() if o.grant.filename == cv.CONTEXT_FILE]
    return stored.data.decode("utf-8")


def test_44000_chinese_characters_are_offloaded_and_the_account_stays_healthy(make_proxy, fake):
    """R1#147: a 44,000-character Chinese paste (~132 KB of UTF-8) drew the captcha and took the account out."""
    fake.configure(answer="读完了。", parse_polls=0)
    proxy = make_proxy()
    text = "这是一段很长的中文文本。" * 3_667  # 44,004 characters
    reply = proxy.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])
    assert reply.choices[0].message.content == "读完了。"
    [sent] = fake.requests_to(COMPLETIONS)
    assert len(sent.body) < SIZE_CAPTCHA_BYTES
    assert [f["name"] for f in sent.json["messages"][0]["files"]] == [cv.CONTEXT_FILE]
    assert text in document_of(fake)
    health = account(proxy)
    assert (health["state"], health["failed"], health["ok"]) == ("healthy", 0, 1)


@pytest.mark.parametrize(("char", "offloaded"), [("a", False), ("长", False), ("😀", True)])
def test_the_same_characters_are_judged_by_their_bytes(make_proxy, fake, char, offloaded):
    """12,000 characters: 12 KB of ASCII and 36 KB of CJK fit a 40,000-byte limit, 48 KB of emoji do not."""
    fake.configure(answer="ok", parse_polls=0)
    proxy = make_proxy(MAX_TURN_BYTES=40_000)
    text = char * 12_000
    proxy.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])
    [sent] = fake.requests_to(COMPLETIONS)
    assert len(sent.body) <= 40_000
    assert bool(sent.json["messages"][0]["files"]) is offloaded
    assert (text in sent.json["messages"][0]["content"]) is not offloaded


def test_a_long_chinese_message_that_cannot_be_offloaded_is_a_clear_400(make_proxy, fake):
    proxy = make_proxy(OFFLOAD_CONTEXT=False)
    with pytest.raises(openai.BadRequestError) as info:
        proxy.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "长" * 44_000}])
    assert info.value.code == "context_length_exceeded"
    assert "bytes of UTF-8, above MAX_TURN_BYTES (114,688)" in info.value.message
    assert not fake.requests_to(COMPLETIONS) and not fake.requests_to("/api/v2/chats/new")
    assert account(proxy)["state"] == "healthy"


def test_a_size_captcha_on_a_body_we_should_not_have_sent_is_ours_not_the_accounts(make_proxy, fake):
    """MAX_TURN_BYTES set above the site's rule lets a 132 KB body out; its captcha is our 400, no cool-down."""
    fake.configure(answer="ok")
    proxy = make_proxy(OFFLOAD_CONTEXT=False, MAX_TURN_BYTES=200_000)
    client = proxy.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "长" * 44_000}])
    assert info.value.code == "context_length_exceeded" and "size captcha" in info.value.message
    assert "MAX_TURN_BYTES below 128,000" in info.value.message
    assert len(fake.requests_to(COMPLETIONS)[-1].body) >= SIZE_CAPTCHA_BYTES  # it was sent, and refused
    health = account(proxy)
    assert (health["state"], health["failed"], health["last_error"]) == ("healthy", 0, None)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "ok"


def test_a_captcha_on_a_body_under_the_guard_is_a_real_challenge(make_proxy, fake):
    proxy = make_proxy(OFFLOAD_CONTEXT=False, MAX_TURN_BYTES=200_000)
    fake.configure(fault="x5sec", fault_times=1)
    with pytest.raises(openai.RateLimitError) as info:
        proxy.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "长" * 1_000}])
    assert info.value.code == "upstream_challenge"
    health = account(proxy)
    assert (health["state"], health["last_error"]) == ("down", "challenge")


def test_the_deprecated_character_cap_still_offloads(make_proxy, fake):
    fake.configure(answer="ok", parse_polls=0)
    proxy = make_proxy(MAX_TURN_CHARS=5_000)
    proxy.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 6_000}])
    [sent] = fake.requests_to(COMPLETIONS)
    assert [f["name"] for f in sent.json["messages"][0]["files"]] == [cv.CONTEXT_FILE]


# ----------------------------------------------------------------- generation turns are bodies too


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks its videos API so
def test_a_chinese_video_prompt_goes_as_the_browser_sends_it(client, fake):
    """The video submission (stream: false) was sent \\u-escaped: 6 bytes per CJK character instead of 3."""
    prompt = "黄昏时分的海浪" * 100
    client.videos.create(prompt=prompt, size="720x1280", seconds="4")
    [sent] = fake.requests_to(COMPLETIONS)
    assert prompt.encode() in sent.body and b"\\u" not in sent.body


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kind", ["image", "video"])
def test_a_prompt_over_the_size_rule_is_a_400_and_never_a_captcha(client, fake, kind):
    prompt = "长" * 44_000
    with pytest.raises(openai.BadRequestError) as info:
        if kind == "image":
            client.images.generate(prompt=prompt)
        else:
            client.videos.create(prompt=prompt, size="720x1280", seconds="4")
    assert info.value.code == "context_length_exceeded" and "MAX_TURN_BYTES" in info.value.message
    assert not fake.requests_to(COMPLETIONS) and not fake.requests_to("/api/v2/chats/new"), "refused before any call"
