"""Chat deletions are paced off the hot path, and still all sent at shutdown (issue 12, a leaner turn)."""

from __future__ import annotations

import time

import pytest

from config import load_settings
from identity_pool import Identity
from qwen_client.client import QwenClient
from qwen_client.conversations import DELETE_SPREAD_SECONDS, DELETES_PER_SECOND, ChatJanitor, delete_gap
from tests.fake_qwen import make_jwt
from tests.helpers import new_chat

TOKEN = make_jwt("user-janitor")


@pytest.mark.parametrize(("waiting", "gap"), [
    (0, 1 / DELETES_PER_SECOND),
    (1, 1 / DELETES_PER_SECOND),
    (10, 1 / DELETES_PER_SECOND),  # a few: the steady pace
    (10_000, DELETE_SPREAD_SECONDS / 10_000),  # a sweep's worth: done within the spread, not an hour later
])
def test_delete_gap(waiting, gap):
    assert delete_gap(waiting) == pytest.approx(gap)


def janitor(base: str, gap) -> tuple[ChatJanitor, Identity]:
    client = QwenClient(load_settings({"CONFIG_FILE": "", "QWEN_BASE_URL": base}, environ={}))
    return ChatJanitor(client, lambda: None, interval=3600, gap=gap), Identity(token=TOKEN, label="janitor")


def test_each_deletion_waits_its_gap_told_how_many_are_left(base, fake):
    asked: list[int] = []
    cleaner, identity = janitor(base, lambda waiting: asked.append(waiting) or 0.0)
    chats = [new_chat(base, TOKEN) for _ in range(3)]
    for chat_id in chats:
        cleaner.discard(identity, chat_id)
    assert cleaner.wait_idle(5)
    cleaner.close()
    assert [r.path.rsplit("/", 1)[1] for r in fake.requests if r.method == "DELETE"] == chats
    assert len(asked) == 3 and asked[-1] == 0 and max(asked) <= 2


def test_close_sends_what_is_queued_without_the_pauses(base, fake):
    cleaner, identity = janitor(base, lambda waiting: 30.0)
    chats = [new_chat(base, TOKEN) for _ in range(3)]
    for chat_id in chats:
        cleaner.discard(identity, chat_id)
    assert fake.wait_request(f"/api/v2/chats/{chats[0]}", method="DELETE", timeout=5)
    assert len([r for r in fake.requests if r.method == "DELETE"]) == 1, "the second waits out the gap"
    started = time.monotonic()
    cleaner.close()
    assert time.monotonic() - started < 5
    assert sorted(r.path.rsplit("/", 1)[1] for r in fake.requests if r.method == "DELETE") == sorted(chats)
