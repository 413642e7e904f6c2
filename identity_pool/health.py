"""What the pool knows of each account: the failure classes, the cool-down policy and the stored health record.

``classify`` maps an error to the account failure it stands for; ``PoolPolicy``
holds the knobs of the reactions; ``Health`` is one account's standing as the
shared store keeps it (``load``/``dump`` convert it).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from errors import EmptyResponse, RateLimited, ServiceUnavailable, UpstreamAuthError, UpstreamError, UpstreamTimeout
from identity_pool.accounts import Identity
from identity_pool.state import shares


class Failure(enum.Enum):
    """What a failed turn says about the account that ran it; each class has its own reaction."""

    AUTH = "auth"  # token refused: renew, then down if renewal fails
    RATE_LIMIT = "rate_limit"  # RateLimited / quota / HTTP 429: cool down for what the site asked
    CHALLENGE = "challenge"  # x5sec/RGV587 or a WAF page: cool down ≥ 2 minutes
    EMPTY = "empty"  # accepted but silent: retry elsewhere once; repeated = throttled
    UPSTREAM = "upstream"  # 5xx, network, timeouts, broken streams: degraded, then down


def classify(error: BaseException | None) -> Failure | None:
    """The account failure an error stands for; ``None`` when it is not the account's fault.

    A user's bad request (400s, moderation) and the proxy's own bugs never count.
    """
    if isinstance(error, UpstreamAuthError):
        return Failure.AUTH
    if isinstance(error, RateLimited):
        return Failure.CHALLENGE if error.code == "upstream_challenge" else Failure.RATE_LIMIT
    if isinstance(error, EmptyResponse):
        return Failure.EMPTY
    if isinstance(error, (UpstreamError, ServiceUnavailable, UpstreamTimeout)):
        return Failure.UPSTREAM
    return None


@dataclasses.dataclass(frozen=True)
class PoolPolicy:
    """The knobs of the pool; see the README's account table."""

    failure_threshold: int = 3  # consecutive upstream failures (or empties + 1) before down
    cooldown: float = 60.0  # first cool-down of a tripped account; doubles per trip in a row
    max_cooldown: float = 1800.0
    challenge_cooldown: float = 120.0
    auth_cooldown: float = 600.0  # a token that cannot be renewed: try again after this
    failover_retries: int = 2  # other accounts tried for one turn before giving up
    max_concurrency: int = 0  # turns at once per account; 0 = unlimited
    queue_timeout: float = 30.0  # how long a turn waits for a busy account
    refresh_margin: float = 3600.0  # renew a token this long before it expires
    refresh_interval: float = 6 * 3600.0  # and at least this often
    global_limits: bool = False  # max_concurrency counts every worker's turns (from the shared store)
    trial_timeout: float = 600.0  # a half-open trial not reported by then (its worker died) no longer blocks

    @classmethod
    def from_settings(cls, settings: Any) -> PoolPolicy:
        return cls(
            failure_threshold=settings.POOL_FAILURE_THRESHOLD,
            cooldown=settings.POOL_COOLDOWN_SECONDS,
            max_cooldown=max(settings.POOL_COOLDOWN_SECONDS, settings.POOL_MAX_COOLDOWN_SECONDS),
            failover_retries=settings.FAILOVER_RETRIES,
            max_concurrency=settings.ACCOUNT_MAX_CONCURRENCY,
            queue_timeout=settings.ACCOUNT_QUEUE_TIMEOUT,
            refresh_margin=settings.TOKEN_REFRESH_MARGIN_MINUTES * 60,
            refresh_interval=settings.TOKEN_REFRESH_INTERVAL_HOURS * 3600,
            global_limits=settings.GLOBAL_LIMITS,
        )


@dataclasses.dataclass
class Health:
    """One account's standing, as the shared store keeps it; changed only by atomic updates there."""

    state: str = "healthy"  # healthy | degraded | down
    streak: int = 0  # consecutive failures
    trips: int = 0  # times in a row the breaker opened (drives the back-off)
    cooldown_until: float = 0.0
    last_error: str | None = None
    reason: str | None = None  # the last failure's error code (``signin_refused``, ``proxy_unreachable``…)
    in_flight: int = 0
    trial: bool = False  # a half-open trial turn is out
    trial_until: float = 0.0  # ...until then at the latest
    ok: int = 0
    failed: int = 0
    next_refresh: float = 0.0  # earliest next proactive renewal attempt
    #: Spent feature quotas (``t2i``, ``t2v``…) → when they return; the account still chats meanwhile.
    quota_until: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Each worker's part of ``in_flight`` (``state.shares``), so a dead worker's part can be taken back.
    shares: dict[str, Any] = dataclasses.field(default_factory=dict)


def load(value: Any) -> Health:
    """A stored health entry (``None``: never seen) as a ``Health``; unknown fields are ignored."""
    if not isinstance(value, dict):
        return Health()
    return Health(**{k: v for k, v in value.items() if k in _FIELDS})


_FIELDS = frozenset(f.name for f in dataclasses.fields(Health))


def dump(health: Health) -> dict[str, Any]:
    """``Health`` as stored (``dataclasses.asdict`` deep-copies, at 5x the cost on every turn)."""
    out = dict(health.__dict__)
    out["quota_until"] = dict(health.quota_until)
    return out


def hold(health: Health, owner: str, delta: int) -> None:
    """``owner`` starts (+1) or ends (-1) a turn on the account: ``in_flight`` is every owner's sum."""
    record = shares.new(health.shares)
    health.in_flight = shares.hold(record, owner, delta)
    health.shares = _pack(record)


def settle(health: Health, owner: str, how: str, now: float) -> int:
    """Reap, restore or forget ``owner``'s turns in flight (see ``Leases``); returns how many moved."""
    record = shares.new(health.shares)
    moved = shares.settle(record, owner, how, now)
    health.in_flight, health.shares = record["n"], _pack(record)
    return moved


def _pack(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("s", "r", "t") if record[k]}


def health_key(identity: Identity) -> str:
    return f"health:{identity.key}"


def token_key(identity: Identity) -> str:
    return f"token:{identity.key}"
