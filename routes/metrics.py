"""The Prometheus collectors of one app, and ``track_turn``, which ties a turn to them and to its usage.

``Metrics`` owns one app's collectors. Under several gunicorn workers
``PROMETHEUS_MULTIPROC_DIR`` is set (by the operator, or by ``gunicorn.conf.py``
in the data directory), each worker writes its own files there and a scrape adds
them up (``prometheus_client``'s multi-process mode); in one process the app's
own registry answers. Labels carry key names, masked account labels and catalog
model ids only (``usage.label`` folds anything else into ``other``), never a secret.

``track_turn`` ties a started turn to the request's usage ``Tally``, the
open-streams gauge and the time-to-first-byte histogram; ``routes.metrics_api``
serves ``GET /metrics`` and holds the request hooks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from flask import g
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from identity_pool import Identity, IdentityPool
from routes import usage

PREFIX = "qwen2openai"
#: Seconds to the first output: a turn's start is a few hundred ms, thinking and media take longer.
TTFB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)


def multiprocess_dir() -> str:
    """The shared directory of the workers' metric files, when several processes share them."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


class AccountsCollector(Collector):
    """``qwen2openai_accounts{state}``, read from the shared pool state at scrape time (so any worker agrees)."""

    def __init__(self, pool: IdentityPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(f"{PREFIX}_accounts", "Pooled Qwen accounts by state.", labels=["state"])
        snapshot = self.pool.snapshot()
        for state in ("healthy", "degraded", "down"):
            family.add_metric([state], snapshot.get(state, 0))
        yield family


class Metrics:
    """One app's Prometheus collectors; it listens to the pool's failures and to every recorded usage tally."""

    def __init__(self, pool: IdentityPool, book: usage.Usage) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.accounts = AccountsCollector(pool)
        self.registry.register(self.accounts)
        if multiprocess_dir():
            os.makedirs(multiprocess_dir(), exist_ok=True)
        reg = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests by route and status.", ["route", "status"],
                                registry=reg)
        self.tokens = Counter(f"{PREFIX}_tokens", "Tokens the site counted, by API key name, account and model.",
                              ["key", "account", "model", "kind"], registry=reg)
        self.upstream_failures = Counter(f"{PREFIX}_upstream_failures", "Failures counted against an account.",
                                         ["account", "class"], registry=reg)
        self.ttfb = Histogram(f"{PREFIX}_time_to_first_byte_seconds", "From the request to the first output.",
                              buckets=TTFB_BUCKETS, registry=reg)
        self.open_streams = Gauge(f"{PREFIX}_open_streams", "Streamed turns in progress.", registry=reg,
                                  multiprocess_mode="livesum")
        pool.on_failure = self.upstream_failure
        book.listeners.append(self.count_tokens)

    def upstream_failure(self, identity: Identity, kind: str) -> None:
        self.upstream_failures.labels(usage.label(identity.label), kind).inc()

    def count_tokens(self, tally: usage.Tally) -> None:
        for kind in ("prompt", "completion", "reasoning"):
            n = tally.counts.get(f"{kind}_tokens", 0)
            if n:
                self.tokens.labels(tally.key, tally.account, tally.model, kind).inc(n)

    def exposition(self) -> bytes:
        """The text format: every worker's figures under multi-process mode, this process's otherwise."""
        if not multiprocess_dir():
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(self.accounts)
        return generate_latest(registry)


def track_turn(metrics: Metrics | None, turn: Any, account: Identity | None, model: str, stream: bool,
               images: bool = False) -> None:
    """Tie a started turn to the request's usage and to the stream and first-byte metrics."""
    if metrics is None:  # a Gateway built without collectors (embedders): nothing to count
        return
    started = g.pop("request_started", None)  # the request's first turn only: pictures take one turn each
    if started is not None:
        metrics.ttfb.observe(time.monotonic() - started)
    tally = usage.current()
    if tally is not None:
        tally.add(account.label if account is not None else None, model)
        tally.turn_opened()
    if stream:
        metrics.open_streams.inc()
    give_back = turn.on_close

    def close(error: Exception | None) -> None:
        try:
            give_back(error)
        finally:
            try:
                if tally is not None:
                    _count_turn(tally, turn, error, images)
                    tally.turn_closed()
            finally:  # last: a stream no longer counted open has had its usage written
                if stream:
                    metrics.open_streams.dec()

    turn.on_close = close


def _count_turn(tally: usage.Tally, turn: Any, error: Exception | None, images: bool) -> None:
    if images:
        tally.add(images=len(getattr(turn.translator, "image_urls", ()) or ()) if error is None else 0)
    else:
        tally.add(**usage.tokens_of(turn.translator))
    if error is not None:
        tally.fail(usage.error_class(error))
