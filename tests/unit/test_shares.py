"""``state.shares``: a shared count kept with each worker's share, reaped, restored and forgotten exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity_pool.state import shares


def apply(ops: list[tuple], now: float = 1000.0) -> dict:
    record = shares.new(None)
    for op in ops:
        if op[0] == "hold":
            shares.hold(record, op[1], op[2])
        else:
            shares.settle(record, op[1], op[0], now)
    return record


@pytest.mark.parametrize(("ops", "total", "held"), [
    ([("hold", "a", 1), ("hold", "a", 1), ("hold", "b", 1)], 3, {"a": 2, "b": 1}),
    ([("hold", "a", 1), ("hold", "a", -1)], 0, {}),
    ([("hold", "a", -1)], 0, {}),  # a give-back of nothing never goes below zero
    ([("hold", "a", 2), ("hold", "b", 1), ("reap", "a")], 1, {"b": 1}),
    ([("hold", "a", 2), ("hold", "b", 1), ("reap", "a"), ("reap", "a")], 1, {"b": 1}),  # twice: once
    ([("hold", "a", 3), ("reap", "a"), ("hold", "a", -1), ("restore", "a")], 2, {"a": 2}),
    ([("hold", "a", 3), ("reap", "a"), ("restore", "a"), ("hold", "a", -1)], 2, {"a": 2}),
    ([("hold", "a", 3), ("reap", "a"), ("hold", "a", 1), ("restore", "a")], 4, {"a": 4}),
    ([("hold", "a", 1), ("reap", "a"), ("hold", "a", -1), ("hold", "a", -1), ("restore", "a")], 0, {}),
    ([("hold", "a", 2), ("hold", "b", 1), ("forget", "a")], 1, {"b": 1}),
    ([("hold", "a", 2), ("reap", "a"), ("forget", "a"), ("restore", "a")], 0, {}),
])
def test_table(ops, total, held):
    record = apply(ops)
    assert (record["n"], record["s"]) == (total, held)


def test_places_parked_by_a_reap_are_forgotten_after_the_grace():
    record = apply([("hold", "dead", 2), ("reap", "dead")], now=1000.0)
    assert record["r"] == {"dead": 2}
    shares.settle(record, "other", "reap", 1000.0 + shares.GRACE + 1)
    assert record["r"] == {} and record["t"] == {}


def test_an_old_plain_count_is_not_kept():
    assert shares.new(7) == {"n": 0, "s": {}, "r": {}, "t": {}}
    assert shares.total(7) == 0 and shares.total({"n": 3}) == 3


OWNERS = ["a", "b", "c"]
STEP = st.tuples(st.sampled_from(["take", "give", "reap", "restore"]), st.sampled_from(OWNERS))


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=60))
def test_any_order_of_holds_reaps_and_restores_ends_exact(steps):
    """Live owners, reaped at any moment (a pause), end with their true places once they restore."""
    record, truth = shares.new(None), dict.fromkeys(OWNERS, 0)
    for how, owner in steps:
        if how == "take":
            truth[owner] += 1
            shares.hold(record, owner, 1)
        elif how == "give" and truth[owner]:
            truth[owner] -= 1
            shares.hold(record, owner, -1)
        elif how in ("reap", "restore"):
            shares.settle(record, owner, how, 1000.0)
        assert record["n"] == sum(record["s"].values()) >= 0
        assert all(record["s"].get(o, 0) <= truth[o] for o in OWNERS), "never more than held"
    for owner in OWNERS:
        shares.settle(record, owner, "restore", 1000.0)
    assert {o: record["s"].get(o, 0) for o in OWNERS} == truth
    assert record["n"] == sum(truth.values())
