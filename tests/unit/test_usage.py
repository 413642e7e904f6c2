"""Named API keys, the usage rows and their summary: tables of inputs and outputs, over the in-memory store."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import ConfigError, load_settings, split_api_keys
from errors import InvalidRequest, RateLimited, UpstreamAuthError, UpstreamError
from identity_pool import MemoryStore
from routes.usage import HOUR, Tally, Usage, error_class, label


@pytest.mark.parametrize(("entries", "keys", "names"), [
    (("alice:sk-alice-1", "bob:sk-bob-2"), ("sk-alice-1", "sk-bob-2"), ("alice", "bob")),
    (("sk-plain-key-123",), ("sk-plain-key-123",), ("sk-pl…",)),
    (("short1",), ("short1",), ("sh…",)),  # a third of a short key at most
    (("alice:sk-a", "sk-b-long-enough-key"), ("sk-a", "sk-b-long-enough-key"), ("alice", "sk-b-l…")),
    (("has space:sk-x",), ("has space:sk-x",), ("has_…",)),  # not a plain name: the whole entry is the key
    (("a|b:sk-x",), ("a|b:sk-x",), ("a_…",)),
    (("alice:",), ("alice:",), ("al…",)),  # nothing after the colon: a key that ends in one
    (("alice:sk-1", "carol:sk-1"), ("sk-1",), ("alice",)),  # one key, first name wins
])
def test_split_api_keys(entries, keys, names):
    assert split_api_keys(entries) == (keys, names)


def test_named_keys_from_the_environment():
    settings = load_settings({"CONFIG_FILE": "", "COOKIE_FILE": ""}, environ={"API_KEY": "alice:sk-a1b2c3,sk-d4e5f6"})
    assert settings.API_KEY == ("sk-a1b2c3", "sk-d4e5f6") and settings.API_KEY_NAMES == ("alice", "sk-…")


def test_metrics_and_admin_keys_are_settings():
    settings = load_settings({"CONFIG_FILE": "", "METRICS_KEY": " m-key ", "ADMIN_KEY": "a-key"}, environ={})
    assert (settings.METRICS_KEY, settings.ADMIN_KEY) == ("m-key", "a-key")
    with pytest.raises(ConfigError):
        load_settings({"CONFIG_FILE": "", "NO_SUCH_KEY": "x"}, environ={})


@pytest.mark.parametrize(("value", "expected"), [
    ("qwen3.7-plus", "qwen3.7-plus"), ("account-1", "account-1"), ("", "-"), (None, "-"),
    ("a" * 65, "other"), ("model\nwith newline", "other"), ('x"}', "other"),
])
def test_label(value, expected):
    assert label(value) == expected


@pytest.mark.parametrize(("error", "status", "expected"), [
    (None, 200, None), (None, 400, "client"), (None, 404, "client"), (None, 429, "rate_limit"),
    (None, 499, "client_closed"), (None, 502, "upstream"), (None, 503, "upstream"), (None, 500, "internal"),
    (UpstreamAuthError("x"), 200, "auth"), (RateLimited("x"), 200, "rate_limit"),
    (RateLimited("x", code="upstream_challenge"), 200, "challenge"), (UpstreamError("x"), 200, "upstream"),
    (InvalidRequest("x"), 200, "client"), (ValueError("bug"), 200, "internal"),
])
def test_error_class(error, status, expected):
    assert error_class(error, status) == expected


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tally(book: Usage, key: str, account: str, model: str, status: int = 200, **counts: int) -> Tally:
    t = Tally(book.record, key)
    t.add(account, model, **counts)
    t.request_ended(status)
    return t


def test_a_tally_is_written_once_when_the_request_and_its_turns_have_ended():
    written: list[Tally] = []
    t = Tally(written.append, "alice")
    t.turn_opened()
    t.request_ended(200)  # a stream: the response left, the turn goes on
    assert written == []
    t.add("account-1", "m", prompt_tokens=5)
    t.fail("upstream")
    t.turn_closed()
    assert written == [t] and t.counts["errors"] == 1 and t.errors == {"upstream": 1}
    t.request_ended(200)
    assert len(written) == 1


def test_summary_today_and_seven_days():
    day = 24 * HOUR
    clock = Clock(100 * day + 10 * HOUR)  # 10:00 UTC
    book = Usage(MemoryStore(), clock)
    clock.now -= 3 * day  # three days ago
    tally(book, "alice", "account-1", "m1", prompt_tokens=10)
    clock.now += 3 * day - 9 * HOUR  # 01:00 today
    tally(book, "alice", "account-2", "m1", prompt_tokens=1, completion_tokens=2, reasoning_tokens=3)
    tally(book, "bob", "account-1", "m2", status=502)
    clock.now += 9 * HOUR
    tally(book, "alice", "account-1", "m1", images=2)
    summary = book.summary()
    today, week = summary["today"], summary["7d"]
    assert today["by_key"]["alice"]["requests"] == 2 and week["by_key"]["alice"]["requests"] == 3
    assert week["by_key"]["alice"]["prompt_tokens"] == 11 and today["by_key"]["alice"]["images"] == 2
    assert today["by_key"]["bob"]["errors"] == 1 and today["by_key"]["bob"]["error:upstream"] == 1
    assert today["by_model"]["m2"]["requests"] == 1 and week["by_account"]["account-1"]["requests"] == 3
    assert today["total"]["requests"] == 3 and week["total"]["requests"] == 4
    assert [h["requests"] for h in summary["hourly"]] == [1, 2, 1]
    assert summary["hourly"][1]["tokens"] == 6
    clock.now += 8 * day  # past the week: nothing left to read
    assert book.summary()["7d"]["total"]["requests"] == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40), max_size=6))
def test_split_api_keys_never_names_a_key_by_itself(entries):
    entries = tuple(e.strip() for e in entries if e.strip() and "," not in e)
    keys, names = split_api_keys(entries)
    assert len(keys) == len(names) == len(set(keys))
    for key, name in zip(keys, names):
        assert key and "|" not in name
        if name.endswith("…"):  # unnamed: a third of the key at most, in plain characters
            assert len(name) - 1 <= len(key) // 3 and label(name[:-1] or "x") != "other"
