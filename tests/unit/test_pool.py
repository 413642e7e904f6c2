"""The identity pool on its own: failure classes, reactions, the breaker and the token store.

No HTTP here: accounts are bare ``Identity`` objects, the clock is a number the
test moves, and renewals are a function the test supplies.
"""

from __future__ import annotations

import json
import os
import time
import threading

import pytest

from errors import (
    ContentFiltered,
    EmptyResponse,
    InvalidRequest,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
    UpstreamAuthError,
    UpstreamBroken,
    UpstreamError,
    UpstreamTimeout,
)
from identity_pool import Identity, IdentityPool
from identity_pool.pool import Failure, PoolPolicy, classify
from identity_pool.token_store import TokenStore
from qwen_client.wire import challenge_error, error_for_code, error_for_status
from tests.fake_qwen import make_jwt


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_pool(n: int = 2, renewer=None, clock: Clock | None = None, **policy) -> IdentityPool:
    identities = [Identity(cookie=f"token={make_jwt(f'user-{i}')}; s=1", label=f"account-{i + 1}") for i in range(n)]
    return IdentityPool(identities, renewer, PoolPolicy(**policy), clock=clock or Clock())


@pytest.mark.parametrize(("error", "kind"), [
    (UpstreamAuthError("x"), Failure.AUTH),
    (error_for_code("unauthorized", "Token has expired"), Failure.AUTH),
    (error_for_status(401), Failure.AUTH),
    (error_for_code("RateLimited", "", 3), Failure.RATE_LIMIT),
    (error_for_code("quota_limit"), Failure.RATE_LIMIT),
    (error_for_status(429), Failure.RATE_LIMIT),
    (challenge_error("x5sec"), Failure.CHALLENGE),
    (error_for_status(403, "<!doctype html><div id=aliyun_waf_aa>"), Failure.CHALLENGE),
    (EmptyResponse("x"), Failure.EMPTY),
    (UpstreamBroken("x"), Failure.UPSTREAM),
    (UpstreamTimeout("x"), Failure.UPSTREAM),
    (ServiceUnavailable("x"), Failure.UPSTREAM),
    (error_for_code("Bad_Request", "Internal error..."), Failure.UPSTREAM),
    (error_for_status(500), Failure.UPSTREAM),
    (error_for_code("data_inspection_failed"), None),
    (error_for_code("invalid_input"), None),
    (InvalidRequest("x"), None),
    (ContentFiltered("x"), None),
    (ValueError("a bug of ours"), None),
    (None, None),
])
def test_failure_classes(error, kind):
    assert classify(error) is kind


# reaction: failure → (state after one failure, cool-down seconds or None)
REACTIONS = [
    (UpstreamError("x"), "degraded", None),
    (EmptyResponse("x"), "degraded", None),
    (UpstreamAuthError("x"), "down", 600),
    (error_for_code("RateLimited", "", 3), "down", 3 * 3600),
    (error_for_status(429), "down", 60),
    (challenge_error("x5sec"), "down", 120),
    (ContentFiltered("x"), "healthy", None),
]


@pytest.mark.parametrize(("error", "state", "cooldown"), REACTIONS)
def test_one_failure_and_its_reaction(error, state, cooldown):
    clock = Clock()
    pool = make_pool(1, clock=clock)
    account = pool.acquire()
    pool.release(account, error)
    health = pool.health(account)
    assert health.state == state
    assert health.in_flight == 0
    if cooldown is not None:
        assert health.cooldown_until - clock.now == pytest.approx(cooldown)


def test_upstream_failures_trip_the_breaker_then_one_trial_decides():
    clock = Clock()
    pool = make_pool(1, clock=clock, failure_threshold=3, cooldown=60)
    account = pool.identities[0]
    for expected in ("degraded", "degraded", "down"):
        pool.release(pool.acquire(), UpstreamError("x"))
        assert pool.health(account).state == expected
    with pytest.raises(ServiceUnavailable) as info:
        pool.acquire()
    assert info.value.retry_after == pytest.approx(60) and "cooling down (1 upstream)" in info.value.message

    clock.now += 61  # cool-down over: exactly one trial goes through
    trial = pool.acquire()
    with pytest.raises(ServiceUnavailable):
        pool.acquire()
    pool.release(trial, UpstreamError("still broken"))
    assert pool.health(account).state == "down"
    assert pool.health(account).cooldown_until - clock.now == pytest.approx(120)  # backs off

    clock.now += 121
    pool.release(pool.acquire(), None)
    health = pool.health(account)
    assert (health.state, health.streak, health.trips) == ("healthy", 0, 0)


def test_all_rate_limited_is_429_with_the_soonest_recovery():
    clock = Clock()
    pool = make_pool(2, clock=clock)
    pool.release(pool.acquire(), challenge_error("x5sec"))
    pool.release(pool.acquire(), error_for_status(429))
    with pytest.raises(RateLimited) as info:
        pool.acquire()
    assert info.value.code == "all_accounts_rate_limited"
    assert info.value.retry_after == pytest.approx(60)
    assert "1 challenge, 1 rate limit" in info.value.message


def test_round_robin_skips_down_accounts():
    pool = make_pool(3)
    first = pool.acquire()
    pool.release(first, UpstreamAuthError("x"))
    picked = []
    for _ in range(4):
        account = pool.acquire()
        picked.append(account.label)
        pool.release(account)
    assert picked == ["account-2", "account-3", "account-2", "account-3"]


def test_failover_before_output_and_user_errors_are_not_retried():
    pool = make_pool(3, failover_retries=2)
    calls = []

    def start(identity):
        calls.append(identity.label)
        if identity.label != "account-3":
            raise UpstreamError("broken")
        return "turn"

    account, turn = pool.run(start)
    assert (account.label, turn, calls) == ("account-3", "turn", ["account-1", "account-2", "account-3"])
    pool.release(account)

    calls.clear()
    with pytest.raises(ContentFiltered):
        pool.run(lambda identity: calls.append(identity.label) or (_ for _ in ()).throw(ContentFiltered("no")))
    assert len(calls) == 1
    assert all(pool.health(i).in_flight == 0 for i in pool.identities)


def test_an_empty_answer_is_retried_elsewhere_once_only():
    pool = make_pool(3, failover_retries=2)
    calls = []

    def start(identity):
        calls.append(identity.label)
        raise EmptyResponse("silent")

    with pytest.raises(EmptyResponse):
        pool.run(start)
    assert len(calls) == 2


def test_failover_gives_up_after_the_configured_retries():
    pool = make_pool(3, failover_retries=1)
    calls = []

    def start(identity):
        calls.append(identity.label)
        raise UpstreamError("broken")

    with pytest.raises(UpstreamError):
        pool.run(start)
    assert calls == ["account-1", "account-2"]


def test_a_refused_token_is_renewed_once_and_the_turn_retried():
    fresh = make_jwt("user-0", ttl=3600)
    renewals = []

    def renewer(identity):
        renewals.append(identity.label)
        return {"token": fresh}

    pool = make_pool(1, renewer=renewer)
    seen = []

    def start(identity):
        seen.append(identity.token)
        if identity.token != fresh:
            raise UpstreamAuthError("expired")
        return "turn"

    account, turn = pool.run(start)
    assert turn == "turn" and renewals == ["account-1"] and seen[-1] == fresh


@pytest.mark.parametrize(("refusals", "account", "state", "tries"), [
    (1, "account-1", "healthy", 2),  # a spurious refusal: the same token, confirmed, works on the retry
    (2, "account-2", "down", 3),     # refused again after renewal: the account is down, the turn moves on
])
def test_a_renewal_that_changes_nothing_still_earns_one_retry(refusals, account, state, tries):
    pool = make_pool(2, renewer=lambda identity: {"token": identity.token})
    seen = []

    def start(identity):
        seen.append(identity.label)
        if identity.label == "account-1" and seen.count("account-1") <= refusals:
            raise UpstreamAuthError("expired")
        return "turn"

    chosen, _ = pool.run(start)
    assert chosen.label == account and len(seen) == tries
    assert pool.health(pool.identities[0]).state == state


def test_a_burst_of_refusals_renews_once():
    fresh = make_jwt("user-0", ttl=3600)
    renewals = []
    gate = threading.Event()

    def renewer(identity):
        renewals.append(1)
        gate.wait(5)
        return {"token": fresh}

    pool = make_pool(1, renewer=renewer)
    account = pool.identities[0]
    stale = account.token
    threads = [threading.Thread(target=pool.renew, args=(account, stale)) for _ in range(5)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert renewals == [1] and account.token == fresh


def test_per_account_concurrency_limit():
    pool = make_pool(2, max_concurrency=1, queue_timeout=0.05)
    a, b = pool.acquire(), pool.acquire()
    with pytest.raises(RateLimited) as info:
        pool.acquire()
    assert info.value.code == "accounts_busy"
    pool.release(a)
    assert pool.acquire() is a
    pool.release(a)
    pool.release(b)


def test_a_waiting_turn_gets_the_account_freed_for_it():
    pool = make_pool(1, max_concurrency=1, queue_timeout=10)
    held = pool.acquire()
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    pool.release(held)
    waiter.join(5)
    assert got == [held]


def test_counters_add_up_under_parallel_use():
    pool = make_pool(3)
    errors = [None, UpstreamError("x"), ContentFiltered("x"), None]

    def worker(n):
        for i in range(50):
            account = pool.acquire()
            pool.release(account, errors[(n + i) % len(errors)])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    snap = pool.snapshot()
    assert sum(a["ok"] for a in snap["accounts"]) == 200
    assert sum(a["failed"] for a in snap["accounts"]) == 100
    assert sum(a["in_flight"] for a in snap["accounts"]) == 0


# ----------------------------------------------------------------- scheduled renewal


def test_renewal_is_due_near_expiry_and_for_short_lived_tokens():
    clock = Clock()
    ttl = 900
    renewed = []

    def renewer(identity):
        renewed.append(identity.label)
        return {"token": make_jwt("user-0", exp=int(clock.now) + ttl), "refresh_token": "rt-next"}

    identity = Identity(cookie=f"token={make_jwt('user-0', exp=int(clock.now) + 7200)}; refresh_token=rt-1",
                        label="account-1")
    pool = IdentityPool([identity], renewer, PoolPolicy(refresh_margin=3600), clock=clock)
    assert pool.refresh_due() == []  # two hours left, margin one hour
    clock.now += 3601
    assert [r["result"] for r in pool.refresh_due()] == ["renewed"]
    assert identity.refresh_token == "rt-next"
    identity.obtained_at = clock.now
    clock.now += 500  # a 15-minute token renews after two thirds of its life, not an hour early
    assert pool.refresh_due() == []
    clock.now += 120
    assert len(pool.refresh_due()) == 1


def test_bare_tokens_are_skipped_and_failures_reported():
    def renewer(identity):
        raise UpstreamAuthError("refresh token refused")

    pool = IdentityPool([Identity(token=make_jwt("a"), label="account-1"),
                         Identity(cookie=f"token={make_jwt('b')}", label="account-2")], renewer)
    results = pool.refresh_all()
    assert [r["result"] for r in results] == ["skipped", "failed"]
    assert "refresh token refused" in results[1]["error"]
    assert make_jwt("a") not in json.dumps(results)


def test_an_expired_token_that_cannot_be_renewed_takes_the_account_out():
    clock = Clock()

    def renewer(identity):
        raise UpstreamAuthError("refused")

    identity = Identity(cookie=f"token={make_jwt('a', exp=int(clock.now) - 10)}", label="account-1")
    pool = IdentityPool([identity], renewer, clock=clock)
    pool.refresh_due()
    assert pool.health(identity).state == "down" and pool.health(identity).in_flight == 0


# ----------------------------------------------------------------- token store


def store_pool(path, identity: Identity) -> IdentityPool:
    return IdentityPool([identity], store=TokenStore(str(path)))


def test_store_round_trip_and_restore(tmp_path):
    path = tmp_path / "state" / "tokens.json"
    cookie = f"token={make_jwt('a', ttl=60)}; refresh_token=rt-old"
    renewed = make_jwt("a", ttl=3600)
    first = Identity(cookie=cookie, label="account-1")
    pool = IdentityPool([first], renewer=lambda i: {"token": renewed, "refresh_token": "rt-new"},
                        store=TokenStore(str(path)))
    pool.renew(first)
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    again = Identity(cookie=cookie, label="account-1")
    store_pool(path, again)
    assert again.token == renewed and again.refresh_token == "rt-new"

    other = Identity(cookie="token=" + make_jwt("b"), label="account-1")  # a new cookie: not restored
    store_pool(path, other)
    assert other.token == make_jwt("b")


def test_a_crash_while_saving_leaves_a_valid_file(tmp_path, monkeypatch):
    path = tmp_path / "tokens.json"
    store = TokenStore(str(path))
    store.save({"k": {"token": "one"}})
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    store.save({"k": {"token": "two"}})  # logged, not raised
    monkeypatch.undo()
    assert path.read_bytes() == before and json.loads(before)["accounts"]["k"]["token"] == "one"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_stray_temp_files_of_a_killed_writer_are_removed_on_start(tmp_path):
    path = tmp_path / "tokens.json"
    old = [tmp_path / ".tokens.json.abc123.tmp", tmp_path / ".tokens.json.bak.def456.tmp"]
    fresh = tmp_path / ".tokens.json.live99.tmp"  # another worker writing right now
    unrelated = tmp_path / ".other.json.xyz.tmp"
    for stray in (*old, fresh, unrelated):
        stray.write_text('{"accounts": {"k": {"token": "secret"}}}')
    for stray in (*old, unrelated):
        os.utime(stray, (time.time() - 3600, time.time() - 3600))
    TokenStore(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, unrelated.name])


def test_a_damaged_file_falls_back_to_the_backup(tmp_path):
    path = tmp_path / "tokens.json"
    store = TokenStore(str(path))
    store.save({"k": {"token": "one"}})
    store.save({"k": {"token": "two"}})  # "one" is now the backup
    path.write_text('{"version": 1, "accou')  # torn by something outside our control
    assert store.load() == {"k": {"token": "one"}}


def test_a_preferred_account_is_chosen_while_usable():
    pool = make_pool(3)
    prefer = lambda identity: identity.label == "account-3"  # noqa: E731
    picked = []
    for _ in range(2):
        account = pool.acquire(prefer=prefer)
        picked.append(account.label)
        pool.release(account)
    pool.release(pool.acquire(prefer=prefer), UpstreamAuthError("x"))  # account-3 goes down
    picked.append(pool.acquire(prefer=prefer).label)
    assert picked == ["account-3", "account-3", "account-1"]
