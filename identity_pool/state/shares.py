"""A count that every worker adds to, kept with each worker's own share of it, so a dead worker's share can go.

A shared count (requests admitted cluster-wide, an account's turns in flight) is
stored as one record: ``{"n": total, "s": {owner: held}, "r": {owner: reaped},
"t": {owner: when reaped}}``. ``n`` is always the sum of ``s``: it is recomputed on
every change, so it can never drift, go negative or keep a place nobody holds.

- ``hold``: an owner takes (+) or gives back (-) places. A give-back beyond the
  owner's counted share comes out of its reaped places instead (see below), and
  never below zero.
- ``reap``: the owner is taken for dead (its lease lapsed): its share leaves the
  total and is parked in ``r``. Taking a share is atomic, so a second reaper of
  the same owner finds nothing left to take: nothing is subtracted twice.
- ``restore``: the owner was only slow and learns it was reaped: its parked places,
  less those it has given back meanwhile, count again. Every step is an addition
  to the owner's own numbers, so any order of holds, reaps and restores ends with
  the owner's share equal to what it really holds.
- ``forget``: the owner exits cleanly: all of its places go at once.

Parked places of an owner that never comes back are dropped after ``GRACE``
seconds by any later change of the record. These are pure functions on the
decoded record (a dict, changed in place); the stores apply them atomically.
"""

from __future__ import annotations

from typing import Any

#: Reaped places of an owner that has not come back by then are forgotten (it is dead, not slow).
GRACE = 600.0

HOW = ("reap", "restore", "forget")


def new(value: Any) -> dict[str, Any]:
    """The stored record, or an empty one (absent, or a value from before shares were kept)."""
    if not isinstance(value, dict):
        return {"n": 0, "s": {}, "r": {}, "t": {}}
    return {"n": 0, "s": dict(value.get("s") or {}), "r": dict(value.get("r") or {}), "t": dict(value.get("t") or {})}


def total(value: Any) -> int:
    """The count a record stands for (0 for anything else)."""
    return int(value.get("n") or 0) if isinstance(value, dict) else 0


def _sum(record: dict[str, Any]) -> None:
    record["n"] = sum(record["s"].values())


def hold(record: dict[str, Any], owner: str, delta: int) -> int:
    """Add ``delta`` places to ``owner``'s share; returns the new total."""
    held = int(record["s"].get(owner, 0)) + delta
    if held < 0:  # giving back places that were reaped meanwhile: they leave the parked ones
        parked = max(0, int(record["r"].get(owner, 0)) + held)
        _park(record, owner, parked, record["t"].get(owner, 0.0))
        held = 0
    if held:
        record["s"][owner] = held
    else:
        record["s"].pop(owner, None)
    _sum(record)
    return record["n"]


def _park(record: dict[str, Any], owner: str, places: int, since: float) -> None:
    if places > 0:
        record["r"][owner], record["t"][owner] = places, since
    else:
        record["r"].pop(owner, None)
        record["t"].pop(owner, None)


def settle(record: dict[str, Any], owner: str, how: str, now: float) -> int:
    """``reap``, ``restore`` or ``forget`` ``owner``'s places; returns how many moved (or went)."""
    if how not in HOW:
        raise ValueError(f"unknown settlement {how!r}")
    held, parked = int(record["s"].pop(owner, 0)), int(record["r"].get(owner, 0))
    if how == "reap":
        _park(record, owner, parked + held, now)
        moved = held
    elif how == "restore":
        _park(record, owner, 0, 0.0)
        if held + parked:
            record["s"][owner] = held + parked
        moved = parked
    else:
        _park(record, owner, 0, 0.0)
        moved = held
    for stale in [o for o, since in record["t"].items() if since < now - GRACE]:
        _park(record, stale, 0, 0.0)
    _sum(record)
    return moved
