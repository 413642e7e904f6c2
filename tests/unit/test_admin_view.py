"""The admin page's pure parts: the hourly chart's geometry and the bounded list of recent errors."""

from __future__ import annotations

import pytest

from routes.admin_view import HEIGHT, WIDTH, hourly_chart, tokens
from routes.recent_errors import RecentErrors
from routes.usage import HOUR, Tally

NOW = 1_796_428_800 + 30 * 60  # half past an hour


@pytest.mark.parametrize(("hourly", "requests", "tokens_", "tallest"), [
    ([], 0, 0, None),
    ([{"hour": NOW - NOW % HOUR, "requests": 4, "tokens": 100}], 4, 100, 23),
    ([{"hour": NOW - NOW % HOUR - 23 * HOUR, "requests": 2, "tokens": 9},
      {"hour": NOW - NOW % HOUR - 1 * HOUR, "requests": 1, "tokens": 90}], 3, 99, 0),
    ([{"hour": NOW - NOW % HOUR - 24 * HOUR, "requests": 7, "tokens": 7}], 0, 0, None),  # older than the chart
])
def test_hourly_chart(hourly, requests, tokens_, tallest):
    chart = hourly_chart(hourly, NOW)
    assert len(chart["bars"]) == 24 and chart["requests"] == requests and chart["tokens"] == tokens_
    assert all(0 <= b["y"] <= HEIGHT and b["y"] + b["h"] == pytest.approx(HEIGHT) for b in chart["bars"])
    assert all(0 <= b["x"] < WIDTH for b in chart["bars"]) and len(chart["line"].split()) == 24
    heights = [b["h"] for b in chart["bars"]]
    if tallest is None:
        assert set(heights) == {0}
    else:
        assert heights.index(max(heights)) == tallest and max(heights) == HEIGHT - 10


def test_tokens_adds_the_three_kinds_only():
    assert tokens({"prompt_tokens": 1, "completion_tokens": 2, "reasoning_tokens": 3, "requests": 9}) == 6
    assert tokens({}) == 0


def test_recent_errors_keep_the_newest_few_and_only_failures():
    errors = RecentErrors(size=3, clock=lambda: 1000.0)
    for i in range(5):
        tally = Tally(lambda _t: None, f"key{i}")
        tally.request_ended(429 if i % 2 == 0 else 200)
        errors.note(tally)
    assert [(e["key"], e["class"], e["status"]) for e in errors.newest_first()] == [
        ("key4", "rate_limit", 429), ("key2", "rate_limit", 429), ("key0", "rate_limit", 429)]
    assert len(RecentErrors(size=2).newest_first()) == 0


def test_admin_sessions_keep_only_a_hash_and_end_on_logout():
    from identity_pool import MemoryStore
    from routes.admin_sessions import LOGIN_ATTEMPTS, AdminSessions

    store = MemoryStore()
    sessions = AdminSessions(store, "fake-admin-key")
    assert sessions.key_matches("fake-admin-key") and not sessions.key_matches("fake-admin-ke")
    assert not sessions.key_matches("fake-admin-key\u00e9")
    token = sessions.open()
    found = sessions.find(token)
    assert found and AdminSessions.csrf_ok(found, found["csrf"]) and not AdminSessions.csrf_ok(found, "x")
    assert not AdminSessions.csrf_ok(found, None) and not AdminSessions.csrf_ok(found, "")
    assert store.get(f"admin-session:{token}") is None  # the store never holds the cookie's token itself
    assert sessions.find(None) is None and sessions.find("x" * 500) is None and sessions.find("other") is None
    sessions.close(token)
    assert sessions.find(token) is None
    for _ in range(LOGIN_ATTEMPTS - 1):
        sessions.failed("10.0.0.1")
    assert not sessions.throttled("10.0.0.1")
    sessions.failed("10.0.0.1")
    assert sessions.throttled("10.0.0.1") and not sessions.throttled("10.0.0.2")
