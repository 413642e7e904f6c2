"""Conversations within the site's limits: continuing one upstream chat, falling back, size, cleanup."""

from __future__ import annotations

import openai
import pytest
import requests

from identity_pool import MemoryStore
from config import Settings
from qwen_client import conversations as cv
from transform.tool_prompts import format_call
from tests.helpers import TOKEN, chats_used, spare_chats
from tests.fake_qwen import make_jwt

MODEL = "qwen3.7-plus"
COMPLETIONS = "/api/v2/chat/completions"


def site_headers(token: str = TOKEN) -> dict[str, str]:
    return {"Cookie": f"token={token}", "Authorization": f"Bearer {token}", "version": "0.2.83",
            "Content-Type": "application/json"}


def browser_chat(base: str, token: str = TOKEN) -> str:
    """A chat the user made in the browser, on the same account."""
    body = {"chatId": "", "title": "My own chat", "models": [MODEL], "chat_mode": "normal", "chat_type": "t2t"}
    resp = requests.post(f"{base}/api/v2/chats/new", json=body, headers=site_headers(token), timeout=5)
    return resp.json()["data"]["id"]


def ask(client, history, text, **kwargs):
    history.append({"role": "user", "content": text})
    reply = client.chat.completions.create(model=MODEL, messages=history, **kwargs).choices[0].message
    history.append(reply.model_dump(exclude_none=True))
    return reply


def turns(fake):
    return [(r.query["chat_id"], r.json["parent_id"], r.json["messages"][0]["content"])
            for r in fake.requests_to(COMPLETIONS)]


def test_twenty_turns_continue_one_upstream_chat(client, fake):
    fake.configure(reply=lambda text: f"answer to {text}")
    history = [{"role": "system", "content": "Be brief."}]
    for n in range(20):
        assert ask(client, history, f"question {n}").content == "answer to " + (
            f"question {n}" if n else "<system>\nBe brief.\n</system>\n<user>\nquestion 0\n</user>")
    assert len(chats_used(fake)) == 1
    sent = turns(fake)
    [chat_id] = {chat for chat, _, _ in sent}
    chat = fake.chats[chat_id]
    assert len(chat["messages"]) == 40
    for n in range(1, 20):
        assert sent[n][2] == f"question {n}", "only the new message is sent"
        assert sent[n][1] == chat["turns"][n - 1]["response_id"], "parent_id is the previous response"


def test_deleted_chat_falls_back_to_a_fresh_chat_with_the_history(client, fake, fake_server):
    history = []
    fake.configure(reply=lambda text: "ok")
    ask(client, history, "one")
    ask(client, history, "two")
    [(chat_id, _, _), _] = turns(fake)
    resp = requests.delete(f"{fake_server.base_url}/api/v2/chats/{chat_id}", headers=site_headers(), timeout=5)
    assert resp.json()["success"] is True
    assert ask(client, history, "three").content == "ok"
    assert ask(client, history, "four").content == "ok"
    sent = turns(fake)
    assert len(sent) == 5 and sent[2][0] == chat_id and sent[2][2] == "three", "tried the old chat first"
    assert sent[3][0] != chat_id and sent[3][1] is None
    assert sent[3][2].startswith("<user>\none\n</user>\n<assistant>\nok\n</assistant>") and "three" in sent[3][2]
    assert sent[4][0] == sent[3][0] and sent[4][2] == "four"
    assert len(chats_used(fake)) == 2


def test_a_conversation_stays_on_its_account_while_others_take_new_ones(make_proxy, fake):
    second = make_jwt("fake-user-0002")
    proxy = make_proxy(COOKIE=f"token={TOKEN}|||token={second}")
    client = proxy.client()
    fake.configure(reply=lambda text: "ok")
    history = []
    for text in ("a", "b", "c"):
        assert ask(client, history, text).content == "ok"
    sent = turns(fake)
    # The pool prefers the account that holds the conversation: one upstream chat, continued.
    assert len({chat for chat, _, _ in sent}) == 1 and [p is None for _, p, _ in sent] == [True, False, False]
    other = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "new topic"}])
    assert other.choices[0].message.content == "ok"
    owners = [fake.chats[chat]["owner"] for chat, _, _ in turns(fake)]
    assert owners[:3] == ["fake-user-0001"] * 3 and owners[3] == "fake-user-0002"  # round robin goes on


def test_a_conversation_is_never_continued_on_another_account(make_proxy, fake):
    second = make_jwt("fake-user-0002")
    proxy = make_proxy(COOKIE=f"token={TOKEN}|||token={second}")
    client = proxy.client()
    fake.configure(reply=lambda text: "ok")
    history = []
    assert ask(client, history, "a").content == "ok"
    fake.configure(reply=lambda text: "ok", account_faults={"fake-user-0001": "x5sec"})
    assert ask(client, history, "b").content == "ok"  # its account is challenged: a new chat elsewhere
    first, refused, moved = turns(fake)
    assert refused[0] == first[0] and refused[1] is not None  # the continuation was tried first
    assert moved[0] != first[0] and moved[1] is None and "<user>\na\n</user>" in moved[2]
    assert fake.chats[moved[0]]["owner"] == "fake-user-0002"


def test_tool_results_continue_the_chat_with_only_the_new_messages(client, fake):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    fake.script(format_call("get_weather", {"city": "Paris"}), "Sunny.")
    history = []
    call = ask(client, history, "Weather in Paris?", tools=[tool]).tool_calls[0]
    history.append({"role": "tool", "tool_call_id": call.id, "content": "sunny"})
    final = client.chat.completions.create(model=MODEL, messages=history, tools=[tool]).choices[0].message
    assert final.content == "Sunny."
    first, second = turns(fake)
    assert second[0] == first[0] and second[2] == (
        f'<tool_response name="get_weather" tool_call_id="{call.id}">\nsunny\n</tool_response>')


@pytest.mark.parametrize("changed", [
    {"model": "qwen3.8-max"},
    {"system": "A different system prompt."},
    {"edited": True},
])
def test_a_changed_conversation_starts_a_new_chat(client, fake, changed):
    fake.configure(reply=lambda text: "ok")
    history = [{"role": "system", "content": "S"}]
    ask(client, history, "one")
    if "system" in changed:
        history[0]["content"] = changed["system"]
    if "edited" in changed:
        history[2]["content"] = "an edited answer"
    history.append({"role": "user", "content": "two"})
    client.chat.completions.create(model=changed.get("model", MODEL), messages=history)
    assert len(chats_used(fake)) == 2


def uploaded_text(fake) -> str:
    [stored] = [o for o in fake.objects.values() if o.grant.filename == cv.CONTEXT_FILE]
    assert stored.parse_status is not None, "documents are parsed before the turn"
    return stored.data.decode("utf-8")


def test_a_300kb_history_is_offloaded_rather_than_challenged(client, fake):
    fake.configure(reply=lambda text: "fine")
    history = [{"role": "system", "content": "You are a careful agent."}]
    for n in range(30):
        history += [{"role": "user", "content": f"step {n} " + "u" * 5000},
                    {"role": "assistant", "content": f"done {n} " + "a" * 5000}]
    history.append({"role": "user", "content": "And now the summary, please."})
    assert client.chat.completions.create(model=MODEL, messages=history).choices[0].message.content == "fine"
    [sent] = fake.requests_to(COMPLETIONS)
    assert len(sent.body) <= Settings.MAX_TURN_BYTES
    message = sent.json["messages"][0]
    assert [f["name"] for f in message["files"]] == [cv.CONTEXT_FILE]
    assert message["content"].endswith("And now the summary, please.") and "step 0" not in message["content"]
    document = uploaded_text(fake)
    assert "<system>\nYou are a careful agent.\n</system>" in document and "done 29 " in document
    assert "And now the summary" not in document


def test_a_huge_newest_message_goes_whole_into_the_document(client, fake):
    fake.configure(answer="read it", parse_polls=0)
    text = "Please review: " + "x" * 130_000
    assert client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}]).choices[0].message.content == "read it"
    message = fake.requests_to(COMPLETIONS)[-1].json["messages"][0]
    assert "up to and including its newest message" in message["content"] and "xxxx" not in message["content"]
    assert text in uploaded_text(fake)


def test_a_huge_tool_result_in_a_continued_chat_is_offloaded_there(client, fake):
    tool = {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {}}}}
    fake.configure(parse_polls=0)
    fake.script(format_call("read_file", {}), "It is long.")
    history = []
    call = ask(client, history, "Read it.", tools=[tool]).tool_calls[0]
    history.append({"role": "tool", "tool_call_id": call.id, "content": "line\n" * 30_000})
    assert client.chat.completions.create(model=MODEL, messages=history, tools=[tool]).choices[0].message.content == "It is long."
    first, second = turns(fake)
    assert second[0] == first[0] and second[2].startswith("This conversation, up to and including")
    assert "<tool_response" in uploaded_text(fake)


@pytest.mark.parametrize(("settings", "body", "tried"), [
    ({"OFFLOAD_CONTEXT": False}, {"messages": [{"role": "user", "content": "x" * 130_000}]}, False),
    ({}, {"messages": [{"role": "user", "content": "hi"}],
          "tools": [{"type": "function", "function": {"name": "t", "description": "d" * 130_000}}]}, True),
])
def test_a_turn_that_cannot_fit_is_a_clear_400(make_proxy, fake, settings, body, tried):
    with pytest.raises(openai.BadRequestError) as info:
        make_proxy(**settings).client().chat.completions.create(model=MODEL, **body)
    assert info.value.code == "context_length_exceeded" and "MAX_TURN_BYTES" in info.value.message
    assert ("even with the conversation in an attached document" in info.value.message) is tried
    assert not fake.requests_to("/api/v2/chats/new") and not fake.requests_to(COMPLETIONS)


def test_cjk_text_counts_as_the_browser_sends_it(client, fake):
    fake.configure(answer="好")
    text = "长" * 30_000  # 180,000 characters if it were sent \\u-escaped: far above the site's limit
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}]).choices[0].message.content == "好"
    assert fake.requests_to(COMPLETIONS)[-1].body.decode("utf-8").count("长") == 30_000


# ----------------------------------------------------------------- cleanup


def wait_janitor(proxy):
    assert proxy.app.extensions["qwen2openai"].conversations.janitor.wait_idle(5)


def test_without_continuation_each_chat_is_deleted_after_use(make_proxy, fake, fake_server):
    mine = browser_chat(fake_server.base_url)
    proxy = make_proxy(CONTINUE_CHATS=False)
    proxy.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    wait_janitor(proxy)
    spares = spare_chats(proxy)  # first: it waits for a spare still being made
    assert set(fake.chats) - spares == {mine}
    [deleted] = fake.requests_to(f"/api/v2/chats/{turns(fake)[0][0]}", method="DELETE")


def test_forgotten_conversations_lose_their_chat_and_only_it(make_proxy, fake, fake_server):
    mine = browser_chat(fake_server.base_url)
    proxy = make_proxy(MAX_CONVERSATIONS=1)
    client = proxy.client()
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "first"}])
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "second"}])
    wait_janitor(proxy)
    first, second = [chat for chat, _, _ in turns(fake)]
    spares = spare_chats(proxy)  # first: it waits for a spare still being made
    assert set(fake.chats) - spares == {mine, second}
    assert not fake.requests_to(f"/api/v2/chats/{mine}", method="DELETE")


def test_failed_turns_leave_no_chat_behind(make_proxy, fake):
    proxy = make_proxy()
    fake.configure(fault="stream_error_string")
    with pytest.raises(openai.APIError):
        proxy.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    wait_janitor(proxy)
    spares = spare_chats(proxy)  # first: it waits for a spare still being made
    assert set(fake.chats) == spares, "only the spare made ahead of the next conversation"


def test_delete_chats_off_keeps_everything(make_proxy, fake):
    proxy = make_proxy(CONTINUE_CHATS=False, DELETE_CHATS=False)
    proxy.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    wait_janitor(proxy)
    assert len(fake.chats) == 1 and not [r for r in fake.requests if r.method == "DELETE"]


# ----------------------------------------------------------------- the store


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make_store(ttl=10.0, capacity=10):
    dropped, clock = [], Clock()
    store = cv.ConversationStore(MemoryStore(), ttl, capacity, lambda account, chat: dropped.append(chat), clock)
    return store, dropped, clock


@pytest.mark.parametrize(("roles", "covered"), [
    (["user", "assistant", "user"], 2),
    (["system", "user", "assistant", "tool", "tool"], 3),
    (["user", "assistant", "user", "assistant", "user"], None),  # the stored key ends at the first answer
    (["user", "assistant"], None),  # nothing new to send
    (["user"], None),
    (["user", "assistant", "system", "user"], None),
])
def test_find_needs_the_stored_answer_then_only_new_user_or_tool_messages(roles, covered):
    store, _, _ = make_store()
    messages = [(role, f"m{i}") for i, role in enumerate(roles)]
    keys = cv.history_keys(messages, "seed")
    first_answer = roles.index("assistant") if "assistant" in roles else None
    if first_answer is not None:
        store.remember(keys[first_answer], "acct", "chat", "resp")
    found = store.find(keys, roles)
    assert (found[0] if found else None) == covered


def test_keys_ignore_whitespace_and_echoed_thinking_but_not_words():
    base = cv.history_keys([("assistant", "Hello  world\n")], "s")
    assert cv.history_keys([("assistant", "<think>hmm</think>Hello world")], "s") == base
    assert cv.history_keys([("assistant", "Hello world!")], "s") != base
    assert cv.history_keys([("assistant", "Hello world")], "other seed") != base


def test_entries_expire_and_their_chat_is_dropped_once_unreferenced():
    store, dropped, clock = make_store(ttl=10)
    store.remember("k1", "a", "chat-1", "r1")
    clock.now = 5
    store.remember("k2", "a", "chat-1", "r2")
    store.remember("k3", "a", "chat-2", "r3")
    clock.now = 11
    store.sweep(force=True)
    assert dropped == [] and store.holds("chat-1") and store.holds("chat-2")
    clock.now = 16
    store.sweep(force=True)
    assert sorted(dropped) == ["chat-1", "chat-2"] and not store.holds("chat-1")


def test_capacity_evicts_the_oldest():
    store, dropped, _ = make_store(capacity=2)
    for n in range(3):
        store.remember(f"k{n}", "a", f"chat-{n}", "r")
    assert dropped == ["chat-0"] and not store.holds("chat-0") and store.holds("chat-2")


def test_forget_chat_drops_its_keys_without_deleting():
    store, dropped, _ = make_store()
    store.remember("k1", "a", "chat-1", "r1")
    store.remember("k2", "a", "chat-1", "r2")
    store.forget_chat("chat-1")
    store.sweep(force=True)
    assert not store.holds("chat-1") and dropped == []


def test_an_idle_conversation_is_deleted_on_a_timer_without_further_traffic(make_proxy, fake, fake_server):
    """The README's promise: a chat idle for CHAT_TTL is deleted, even when no later request comes."""
    mine = browser_chat(fake_server.base_url)
    fake.configure(answer="kept for a while")
    proxy = make_proxy(CHAT_TTL=2.0)
    proxy.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    [(chat_id, _, _)] = turns(fake)
    assert chat_id in fake.chats, "a conversation that can be continued keeps its chat until it idles out"
    deleted = fake.wait_request(f"/api/v2/chats/{chat_id}", method="DELETE", timeout=8)
    assert deleted is not None, "no request came, yet the idle chat must be swept"
    assert proxy.app.extensions["qwen2openai"].conversations.janitor.wait_idle(5)
    spares = spare_chats(proxy)  # first: it waits for a spare still being made
    assert set(fake.chats) - spares == {mine}
    assert len(fake.requests_to("/v1/chat/completions")) == 0 and len(fake.requests_to(COMPLETIONS)) == 1


def test_the_sweeper_starts_with_the_app_and_stops_on_close(make_proxy, fake):
    janitor = make_proxy(CHAT_TTL=0.5).app.extensions["qwen2openai"].conversations.janitor
    assert janitor.running, "the factory starts the sweeper"
    janitor.close()
    assert not janitor.running
