"""Usage per API key, account and model: counted once per request, kept by the hour in the shared store.

Every request that passed the API-key check gets a ``Tally`` (``begin``); the
turns it opens add the site's own token counts, pictures and clips to it
(``track_turn``, ``note``), and it is written once, when both the request and
its last turn have ended: one atomic update in the shared store per request,
never per streamed event. Rows are bucketed by the UTC hour, so every worker
(and, with Redis, every host) adds to the same figures and they survive a
restart; ``Usage.summary`` reads today and the last 7 days back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import g, has_request_context

from errors import ProxyError
from identity_pool import StateStore, StoreError, classify
from transform.answer import openai_usage

logger = logging.getLogger("qwen2openai")

#: The counters of one row; tokens are the site's own counts (its ``usage`` object).
FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "reasoning_tokens", "images", "videos")
HOUR = 3600
#: Rows older than this are dropped by the store itself (7 days read back, plus a day of slack).
KEEP_SECONDS = 8 * 24 * HOUR
#: A label that is not this plain (a model id the catalog should never give, a long name) becomes "other".
_PLAIN = re.compile(r"[A-Za-z0-9._@:+-]{1,64}")
NONE = "-"


def label(value: str | None) -> str:
    """A bounded, plain value for a usage row or a metric label; anything else folds into ``other``."""
    if not value:
        return NONE
    return value if _PLAIN.fullmatch(value) else "other"


def error_class(error: BaseException | None = None, status: int = 200) -> str | None:
    """The class an error is counted under: the pool's failure class, else what the status says."""
    kind = classify(error) if error is not None else None
    if kind is not None:
        return kind.value
    if isinstance(error, ProxyError):
        status = error.status
    elif error is not None:
        return "internal"
    if status < 400:
        return None
    if status == 429:
        return "rate_limit"
    if status == 499:
        return "client_closed"
    if status < 500:
        return "client"
    return "upstream" if status in (502, 503, 504) else "internal"


class Tally:
    """One request's usage, written once when the request and every turn it opened have ended."""

    def __init__(self, sink: Callable[[Tally], None], key: str) -> None:
        self._sink, self._lock = sink, threading.Lock()
        self.key, self.account, self.model = key, NONE, NONE
        self.counts: dict[str, int] = dict.fromkeys(FIELDS, 0)
        self.counts["requests"] = 1
        self.errors: dict[str, int] = {}
        self.status = 200
        self._open_turns, self._ended, self._written = 0, False, False

    def add(self, account: str | None = None, model: str | None = None, **counts: int) -> None:
        with self._lock:
            self.account = label(account) if account else self.account
            self.model = label(model) if model else self.model
            for name, value in counts.items():
                self.counts[name] += value

    def fail(self, error_kind: str | None) -> None:
        if error_kind:
            with self._lock:
                self.errors[error_kind] = self.errors.get(error_kind, 0) + 1

    def turn_opened(self) -> None:
        with self._lock:
            self._open_turns += 1

    def turn_closed(self) -> None:
        with self._lock:
            self._open_turns -= 1
        self._maybe_write()

    def request_ended(self, status: int) -> None:
        with self._lock:
            self._ended, self.status = True, status
            failed_in_turn = bool(self.errors)
        if not failed_in_turn:
            self.fail(error_class(status=status))
        self._maybe_write()

    def _maybe_write(self) -> None:
        with self._lock:
            if self._written or not self._ended or self._open_turns > 0:
                return
            self._written = True
        self.counts["errors"] = sum(self.errors.values())
        self._sink(self)


def tokens_of(translator: Any) -> dict[str, int]:
    """The site's own token counts from a turn's translator (a tool or JSON turn wraps the plain one)."""
    inner = getattr(translator, "inner", translator)
    usage = openai_usage(getattr(inner, "usage", None))
    reasoning = int(usage["completion_tokens_details"]["reasoning_tokens"])
    return {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"] - reasoning,
            "reasoning_tokens": reasoning}


class Usage:
    """The usage figures in the shared store: one row per hour, key, account and model, and an index per hour."""

    def __init__(self, store: StateStore, clock: Callable[[], float] = time.time) -> None:
        self._store, self._clock = store, clock
        self._indexed: set[tuple[int, str]] = set()  # rows this process already put in their hour's index
        self._lock = threading.Lock()
        #: Also told of every recorded request (the token counter of ``/metrics``).
        self.listeners: list[Callable[[Tally], None]] = []

    def record(self, tally: Tally) -> None:
        """Add one request's counts: one atomic update of its row (and, first time this hour, of the index)."""
        hour = int(self._clock()) // HOUR
        row = "|".join((tally.key, tally.account, tally.model))
        delta = {k: v for k, v in tally.counts.items() if v}
        delta.update({f"error:{k}": v for k, v in tally.errors.items()})
        try:
            self._store.update(f"usage:{hour}:{row}", lambda value: _added(value, delta), ttl=KEEP_SECONDS)
            with self._lock:
                if self._indexed and next(iter(self._indexed))[0] != hour:
                    self._indexed.clear()  # a new hour: last hour's rows are all in its index already
                new = (hour, row) not in self._indexed
                self._indexed.add((hour, row))
            if new:
                self._store.update(f"usage-index:{hour}", lambda rows: _with(rows, row), ttl=KEEP_SECONDS)
        except StoreError as exc:  # usage is worth less than the answer: log, never fail the turn
            logger.warning("usage not recorded: %s", exc)
        for listener in self.listeners:
            listener(tally)

    def rows(self, since: float) -> list[dict[str, Any]]:
        """Every row since ``since`` (seconds), each ``{"hour", "key", "account", "model", counters…}``."""
        first, last = int(since) // HOUR, int(self._clock()) // HOUR
        hours = list(range(first, last + 1))
        indexes = self._store.get_many([f"usage-index:{h}" for h in hours])
        names = [(h, row) for h, rows in zip(hours, indexes) for row in rows or ()]
        values = self._store.get_many([f"usage:{h}:{row}" for h, row in names]) if names else []
        out = []
        for (h, row), value in zip(names, values):
            key, account, model = (row.split("|") + [NONE, NONE])[:3]
            out.append({"hour": h * HOUR, "key": key, "account": account, "model": model, **(value or {})})
        return out

    def summary(self, days: int = 7) -> dict[str, Any]:
        """Totals per key, account and model for today (UTC) and the last ``days`` days, and requests per hour."""
        now = self._clock()
        rows = self.rows(now - days * 24 * HOUR)
        today = now - now % (24 * HOUR)
        recent = [r for r in rows if r["hour"] >= today]
        return {
            "generated_at": int(now),
            "today": _totals(recent),
            f"{days}d": _totals(rows),
            "hourly": _hourly(rows),
        }


def _added(value: Any, delta: Mapping[str, int]) -> dict[str, int]:
    counts = dict(value or {})
    for name, n in delta.items():
        counts[name] = counts.get(name, 0) + n
    return counts


def _with(rows: Any, row: str) -> list[str]:
    rows = list(rows or [])
    return rows if row in rows else rows + [row]


def _totals(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"total": dict.fromkeys(FIELDS, 0), "by_key": {}, "by_account": {}, "by_model": {}}
    for row in rows:
        counts = {k: v for k, v in row.items() if k in FIELDS or k.startswith("error:")}
        for bucket in (out["total"], out["by_key"].setdefault(row["key"], dict.fromkeys(FIELDS, 0)),
                       out["by_account"].setdefault(row["account"], dict.fromkeys(FIELDS, 0)),
                       out["by_model"].setdefault(row["model"], dict.fromkeys(FIELDS, 0))):
            for name, n in counts.items():
                bucket[name] = bucket.get(name, 0) + n
    return out


def _hourly(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, int]]:
    hours: dict[int, dict[str, int]] = {}
    for row in rows:
        bucket = hours.setdefault(row["hour"], {"hour": row["hour"], "requests": 0, "tokens": 0})
        bucket["requests"] += row.get("requests", 0)
        bucket["tokens"] += sum(row.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "reasoning_tokens"))
    return [hours[h] for h in sorted(hours)]


# --------------------------------------------------------------------------- the current request


def begin(sink: Callable[[Tally], None], key: str) -> Tally:
    """Start counting the current request for API key ``key`` (its name, or a masked prefix)."""
    tally = Tally(sink, key)
    g.usage_tally = tally
    return tally


def current() -> Tally | None:
    return g.get("usage_tally") if has_request_context() else None


def note(account: str | None, model: str | None, **counts: int) -> None:
    """Add to the current request's usage (a video task submitted, say), if it is being counted."""
    tally = current()
    if tally is not None:
        tally.add(account, model, **counts)
