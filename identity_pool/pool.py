"""The ``IdentityPool`` that hands accounts out: their health, failover, cool-downs and token renewal.

The pool keeps every account's health and token in the shared state store
(``identity_pool.state``), so all workers and hosts agree: it picks accounts
round-robin, learns from each outcome, cools broken accounts down, fails a
turn over to another account and renews tokens before they lapse, each token
once cluster-wide under a lock in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from config import ConfigError
from errors import ProxyError, RateLimited, ServiceUnavailable, UpstreamAuthError
from identity_pool.accounts import Identity, mask
from identity_pool.health import Failure, Health, PoolPolicy, classify, dump, health_key, hold, load, settle, token_key
from identity_pool.credentials import CredentialError, parse_account
from identity_pool.registry import KEY as ACCOUNTS_KEY
from identity_pool.registry import AccountRegistry, identity_from, public_id
from identity_pool.state import MemoryStore, StateStore
from identity_pool.token_store import TokenStore
from identity_pool.tokens import Renewer, Tokens

logger = logging.getLogger(__name__)
T = TypeVar("T")


Preference = Callable[[Identity], bool]


class IdentityPool:
    """Round-robin over usable accounts, with health, cool-downs, failover and token renewal.

    ``run(start)`` is the whole story of one turn: pick an account, call
    ``start(identity)``, and on a failure before any output renew the token or
    move on to another account. The caller releases the account it got back
    with ``release(identity, error)`` when the turn ends. Health and tokens live
    in ``state`` (one process's memory unless a shared store is given).
    """

    #: A renewal holds the account's lock at most this long (a dead worker's lock lapses then).
    RENEW_LOCK_SECONDS = 90.0

    def __init__(
        self,
        identities: Iterable[Identity],
        renewer: Renewer | None = None,
        policy: PoolPolicy | None = None,
        store: TokenStore | None = None,
        clock: Callable[[], float] = time.time,
        state: StateStore | None = None,
        registry: AccountRegistry | None = None,
        owner: str = "",
    ) -> None:
        self.identities = list(identities)
        self.owner = owner  # this worker's id in the shared turn counts (``Leases``)
        self._configured = list(self.identities)  # from the files and environment; the registry adds to these
        self._registry = registry
        self._disabled: frozenset[str] = frozenset()
        self._accounts_version = 0
        self.policy = policy or PoolPolicy()
        self._renewer = renewer
        self._state = state if state is not None else MemoryStore()
        self._clock = clock
        self._local = {id(i): 0 for i in self.identities}  # this process's turns per account
        self._next_refresh = {id(i): 0.0 for i in self.identities}
        self._next = 0
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()
        self._tokens = Tokens(self._state, renewer, store, self.RENEW_LOCK_SECONDS)
        self._tokens.restore(self.identities)
        #: Told of every failure that counts against an account, as (account, failure class): metrics listen here.
        self.on_failure: Callable[[Identity, str], None] | None = None
        if registry is not None:
            self.sync_accounts()

    @classmethod
    def from_settings(cls, settings: Any, renewer: Renewer | None = None,
                      state: StateStore | None = None, owner: str = "") -> IdentityPool:
        size = settings.UPSTREAM_POOL_SIZE
        identities = []
        for n, line in enumerate(settings.COOKIE, 1):
            try:
                identities.append(identity_from(parse_account(line), size))
            except CredentialError as exc:
                raise ConfigError(f"COOKIE (or COOKIE_FILE) account {n}: {exc}") from None
        identities += [Identity(token=t, pool_size=size) for t in settings.QWEN_TOKEN]
        for n, identity in enumerate(identities, 1):
            identity.label = f"account-{n}"
        store = TokenStore(settings.TOKEN_STORE_FILE) if settings.TOKEN_STORE_FILE else None
        registry = AccountRegistry(state, size) if state is not None else None
        return cls(identities, renewer, PoolPolicy.from_settings(settings), store, state=state, registry=registry,
                   owner=owner)

    @property
    def registry(self) -> AccountRegistry | None:
        """The run-time account set (the admin API changes it); ``None`` without a state store."""
        return self._registry

    def sync_accounts(self, value: Any = None, read: bool = True) -> None:
        """Serve the account set the registry holds now (``value``: its entry, already read with other keys)."""
        if self._registry is None:
            return
        value = self._registry.read() if read else value
        version = self._registry.version(value)
        if version == self._accounts_version and read is False:
            return
        served, disabled = self._registry.apply(value, self._configured, self.identities)
        added = [i for i in served if id(i) not in self._local]
        with self._lock:
            for identity in added:
                self._local[id(identity)] = 0
                self._next_refresh[id(identity)] = 0.0
            gone = [i for i in self.identities if i not in served]
            self.identities, self._disabled, self._accounts_version = served, disabled, version
        if added:
            self._tokens.restore(added)
        for identity in gone:
            logger.info("%s: removed", identity.label)

    def is_disabled(self, identity: Identity) -> bool:
        return identity.key in self._disabled

    def __len__(self) -> int:
        return len(self.identities)

    def health(self, identity: Identity) -> Health:
        return load(self._state.get(health_key(identity)))

    def find(self, account: str) -> Identity | None:
        """The pooled account with this id (or label), e.g. the owner of a stored conversation."""
        return next((i for i in self.identities if (i.account_id or i.label) == account), None)

    # -- handing out -----------------------------------------------------

    def acquire(
        self, exclude: Iterable[Identity] = (), prefer: Preference | None = None, feature: str | None = None,
    ) -> Identity:
        """The next usable account not in ``exclude`` (the ``prefer``-red one if usable), with a token.

        Raises 503 (429 when every account is rate limited) with ``Retry-After``
        set to the soonest recovery when no account can take the turn. With a
        ``feature`` (image or video generation), accounts whose quota for it is
        spent are skipped too. An account without a token gets one here (a
        password account signs in); when that fails, the failure is that
        account's own and the next account is tried.
        """
        self._guard_empty()
        skip = {id(i) for i in exclude}
        deadline = time.monotonic() + self.policy.queue_timeout  # real time, whatever the clock says
        failed: ProxyError | None = None
        while True:
            identity, busy, healths = self._pick(skip, prefer, feature)
            if identity is not None and not identity.token:
                try:
                    self.renew(identity, stale="")
                except ProxyError as exc:
                    self.release(identity, exc)
                    skip.add(id(identity))
                    failed = exc
                    continue
            if identity is not None:
                return identity
            wait = deadline - time.monotonic()
            if not busy or wait <= 0:
                if failed is not None and all(id(i) in skip for i in self.identities):
                    raise failed  # this turn's only candidates could not get a token: say why
                raise self._unavailable(healths, skip, busy, feature)
            with self._lock:  # a release here wakes us; one elsewhere is seen on the next look
                self._freed.wait(min(wait, 0.05 if self._state.shared else 1.0))

    def _guard_empty(self) -> None:
        if not self.identities:
            raise ServiceUnavailable(
                "No Qwen account is configured. Put a chat.qwen.ai browser cookie in cookie.txt "
                "(or set COOKIE or QWEN_TOKEN) and restart; see the README.",
                code="no_account",
                retryable=False,
            )

    def _pick(
        self, skip: set[int], prefer: Preference | None = None, feature: str | None = None,
    ) -> tuple[Identity | None, bool, dict[int, Health]]:
        """Round-robin choice over the stored health; ``busy`` says a slot may free up soon.

        One read of every account's health and token, then an atomic claim of
        the chosen one (which re-checks it, since another worker may have won it).
        """
        extra = [ACCOUNTS_KEY] if self._registry is not None else []  # the run-time set, in the same read
        values = self._state.get_many([k for i in self.identities for k in (health_key(i), token_key(i))] + extra)
        if extra and self._registry is not None and self._registry.version(values[-1]) != self._accounts_version:
            self.sync_accounts(values[-1], read=False)  # another worker changed the accounts: read again
            values = self._state.get_many([k for i in self.identities for k in (health_key(i), token_key(i))])
        identities = self.identities
        count = len(identities)
        healths = {id(i): load(values[2 * n]) for n, i in enumerate(identities)}
        for n, identity in enumerate(identities):
            self._adopt(identity, values[2 * n + 1])
        order = [identities[(self._next + step) % count] for step in range(count)] if count else []
        if prefer is not None:  # e.g. the account that holds the conversation a request continues
            order.sort(key=lambda identity: not prefer(identity))
        busy = False
        for identity in order:
            if id(identity) in skip:
                continue
            verdict = self._usable(identity, healths[id(identity)], feature, self._clock())
            if verdict == "busy":
                busy = True
            if verdict != "yes" or not self._claim(identity, feature):
                continue
            with self._lock:
                self._local[id(identity)] += 1
                self._next = (identities.index(identity) + 1) % count
            return identity, False, healths
        return None, busy, healths

    def _usable(self, identity: Identity, health: Health, feature: str | None, now: float) -> str:
        """``yes``, ``busy`` (at its concurrency cap) or ``no`` for one account's health."""
        if identity.key in self._disabled:
            return "no"
        if health.state == "down" and (now < health.cooldown_until or (health.trial and now < health.trial_until)):
            return "no"
        if feature is not None and health.quota_until.get(feature, 0.0) > now:
            return "no"
        cap = self.policy.max_concurrency
        in_flight = health.in_flight if self.policy.global_limits else self._local[id(identity)]
        return "busy" if cap and in_flight >= cap else "yes"

    def _claim(self, identity: Identity, feature: str | None) -> bool:
        claimed: list[bool] = []

        def claim(value: Any) -> Any:
            health, now = load(value), self._clock()
            claimed[:] = [self._usable(identity, health, feature, now) == "yes"]
            if not claimed[0]:
                return value
            if health.state == "down":
                health.trial, health.trial_until = True, now + self.policy.trial_timeout  # half-open
                logger.info("%s: cool-down over, trying it again", identity.label)
            hold(health, self.owner, 1)
            return dump(health)

        self._state.update(health_key(identity), claim)
        return claimed[0]

    def _unavailable(
        self, healths: dict[int, Health], skip: set[int], busy: bool, feature: str | None = None,
    ) -> ProxyError:
        now = self._clock()
        down = [(i, h) for i in self.identities if (h := healths[id(i)]).state == "down" and id(i) not in skip]
        spent = [h.quota_until[feature] for i in self.identities if id(i) not in skip
                 and (h := healths[id(i)]).state != "down" and h.quota_until.get(feature or "", 0.0) > now]
        if spent and feature is not None:
            soonest = max(1.0, min(spent) - now)
            return RateLimited(
                f"Every usable Qwen account has spent its {feature} quota; the first is back in about "
                f"{soonest / 60:.0f} min. Retry then, or add accounts.",
                code="all_accounts_quota_spent", retry_after=soonest,
            )
        if busy and not down:
            return RateLimited(
                f"All Qwen accounts are busy (ACCOUNT_MAX_CONCURRENCY={self.policy.max_concurrency}). Retry shortly.",
                code="accounts_busy", retry_after=1.0,
            )
        if not down:  # every account was already tried for this turn
            return ServiceUnavailable("Every Qwen account failed this turn. Retry later.", retry_after=10.0)
        soonest = max(1.0, min(h.cooldown_until for _, h in down) - now)
        reasons: dict[str, int] = {}
        for _, h in down:
            reasons[h.last_error or "unknown"] = reasons.get(h.last_error or "unknown", 0) + 1
        why = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(reasons.items()))
        message = (f"All {len(self.identities)} Qwen account(s) are cooling down ({why}); "
                   f"the first is back in about {soonest:.0f} s. Retry then, or add accounts.")
        if set(reasons) <= {Failure.RATE_LIMIT.value, Failure.CHALLENGE.value}:
            return RateLimited(message, code="all_accounts_rate_limited", retry_after=soonest)
        return ServiceUnavailable(message, code="no_account_available", retry_after=soonest)

    # -- learning from outcomes ------------------------------------------

    def release(self, identity: Identity, error: BaseException | None = None, feature: str | None = None) -> None:
        """Give an account back with the outcome of its turn; this is where health is learned.

        A rate limit met by a ``feature`` turn (image or video generation) is
        that feature's quota: only the feature cools down, chat goes on.
        """
        kind = classify(error)
        if id(identity) not in self._local:
            return
        if kind is not None and self.on_failure is not None:
            self.on_failure(identity, kind.value)
        if kind is Failure.RATE_LIMIT and feature is not None:
            self._spend_quota(identity, feature, error)
            return
        if kind is Failure.AUTH and self._adopt(identity, self._state.get(token_key(identity))):
            kind = None  # another worker renewed the token meanwhile: not the account's fault
        changes: list[tuple[str, str, float]] = []

        def learn(value: Any) -> Any:
            health = load(value)
            hold(health, self.owner, -1)
            was_trial, health.trial = health.trial, False
            before = health.state
            if error is None:
                health.ok += 1
                health.streak = health.trips = 0
                health.state, health.cooldown_until = "healthy", 0.0
            elif kind is not None:
                health.failed += 1
                health.streak += 1
                health.last_error = kind.value
                health.reason = getattr(error, "code", None)
                self._react(health, kind, error, was_trial)
            changes[:] = [(before, health.state, health.cooldown_until)]
            return dump(health)

        self._state.update(health_key(identity), learn)
        self._freed_one(identity)
        before, after, until = changes[0]
        if after != before:
            detail = f" for {until - self._clock():.0f} s" if after == "down" else ""
            logger.info("%s: %s -> %s%s (%s)", identity.label, before, after, detail,
                        kind.value if kind else "success")

    def _freed_one(self, identity: Identity) -> None:
        with self._lock:
            self._local[id(identity)] = max(0, self._local[id(identity)] - 1)
            self._freed.notify_all()

    def _spend_quota(self, identity: Identity, feature: str, error: BaseException | None) -> None:
        pause = max(getattr(error, "retry_after", None) or 0.0, self.policy.cooldown)

        def spend(value: Any) -> Any:
            health = load(value)
            hold(health, self.owner, -1)
            health.trial = False
            health.failed += 1
            health.last_error = f"{feature}_quota"
            health.quota_until[feature] = self._clock() + pause
            return dump(health)

        self._state.update(health_key(identity), spend)
        self._freed_one(identity)
        logger.info("%s: %s quota spent; %s paused for %.0f s, chat goes on", identity.label, feature, feature, pause)

    def _react(self, health: Health, kind: Failure, error: BaseException, was_trial: bool) -> None:
        """Apply a failure class's reaction (see ``Failure``)."""
        policy, now = self.policy, self._clock()
        retry_after = getattr(error, "retry_after", None) or 0.0
        if kind is Failure.UPSTREAM and health.streak < policy.failure_threshold and not was_trial:
            health.state = "degraded"
            return
        if kind is Failure.EMPTY and health.streak < 2 and not was_trial:
            health.state = "degraded"
            return
        if kind is Failure.AUTH:
            pause = policy.auth_cooldown
        elif kind is Failure.RATE_LIMIT:
            pause = max(retry_after, policy.cooldown)
        elif kind is Failure.CHALLENGE:
            pause = max(retry_after, policy.challenge_cooldown) * 2 ** min(health.trips, 4)
        else:
            pause = min(policy.cooldown * 2 ** min(health.trips, 10), policy.max_cooldown)
        health.trips += 1
        health.state, health.cooldown_until = "down", now + pause

    def run(
        self, start: Callable[[Identity], T], prefer: Preference | None = None, feature: str | None = None,
    ) -> tuple[Identity, T]:
        """Start a turn on some account, renewing a refused token and failing over before output.

        Returns the account (still acquired: release it when the turn ends) and
        what ``start`` returned. A user's bad request is raised at once.
        """
        tried: list[Identity] = []
        last: ProxyError | None = None
        empties = 0
        for _ in range(1 + self.policy.failover_retries):
            try:
                identity = self.acquire(exclude=tried, prefer=prefer, feature=feature)
            except ProxyError:
                if last is not None:  # no other account left: the client hears the real failure
                    raise last from None
                raise
            tried.append(identity)
            try:
                return identity, self._start(identity, start)
            except ProxyError as exc:
                self.release(identity, exc, feature)
                kind, last = classify(exc), exc
                if kind is None:
                    raise
                empties += kind is Failure.EMPTY
                if empties > 1:  # one retry elsewhere for a silent answer, not more
                    raise
                logger.info("%s: %s before any output; trying another account", identity.label, kind.value)
            except BaseException as exc:
                self.release(identity, exc)
                raise
        assert last is not None
        raise last

    def _start(self, identity: Identity, start: Callable[[Identity], T]) -> T:
        stale = identity.token
        try:
            return start(identity)
        except UpstreamAuthError:
            if not identity.renewable:
                raise
            # A renewal that works vouches for the account, new token or the same one: one more try
            # decides, so a spurious refusal does not cost the auth cool-down. Its failure, or a second
            # refusal, does.
            self.renew(identity, stale=stale)
            return start(identity)

    # -- tokens ----------------------------------------------------------

    def renew(self, identity: Identity, stale: str | None = None) -> bool:
        """Get a fresh token for an account now; ``False`` if it did not change.

        ``stale`` is the token that was refused: if another turn (in any worker)
        already replaced it, nothing is fetched. Raises what the renewal failed with.
        """
        changed, fetched = self._tokens.renew(identity, stale)
        if fetched:
            logger.info("%s: token %s, valid until %s", identity.label, "renewed" if changed else "unchanged",
                        time.strftime("%Y-%m-%d %H:%M", time.gmtime(identity.expires_at or 0)) + " UTC")
            self._tokens.save_mirror(self.identities)
        return changed

    def _adopt(self, identity: Identity, entry: Any) -> bool:
        return self._tokens.adopt(identity, entry)

    @property
    def state(self) -> StateStore:
        """The store this pool keeps its accounts in (``/health`` reports on it)."""
        return self._state

    def refresh_due(self) -> list[dict[str, Any]]:
        """Renew every token close to expiry or older than the interval (the refresher's tick)."""
        now = self._clock()
        self._tokens.sync([i for i in self.identities if i.renewable])  # renewed elsewhere: not due here
        due = [i for i in self.identities if i.renewable and self._needs_renewal(i, now)]
        return [self._refresh_one(i, "scheduled") for i in due]

    def _needs_renewal(self, identity: Identity, now: float) -> bool:
        if now < self._next_refresh[id(identity)]:
            return False
        expires = identity.expires_at
        if not identity.token or expires is None:
            return True
        margin = self.policy.refresh_margin
        if identity.obtained_at is not None:  # short-lived tokens renew after two thirds of their life
            margin = min(margin, (expires - identity.obtained_at) / 3)
            if now - identity.obtained_at >= self.policy.refresh_interval:
                return True
        return expires - now <= margin

    def refresh_all(self, only: int | None = None) -> list[dict[str, Any]]:
        """Renew all accounts (or the one with this 1-based number) now: ``POST /refresh-token``."""
        chosen = self.identities if only is None else [self.identities[only - 1]]
        return [self._refresh_one(i, "requested") for i in chosen]

    def _refresh_one(self, identity: Identity, why: str) -> dict[str, Any]:
        result = {"account": identity.label, "id": mask(identity.account_id) or None}
        if not identity.renewable:
            return {**result, "result": "skipped", "reason": "a bare token cannot be renewed; configure a cookie"}
        try:
            changed = self.renew(identity)
        except ProxyError as exc:
            # A sign-in refused or banned must not be retried every minute: each try spends the IP's sign-ins.
            wait = max(60.0, exc.retry_after or 0.0, self.policy.auth_cooldown if exc.code == "signin_refused" else 0)
            self._next_refresh[id(identity)] = self._clock() + wait
            logger.warning("%s: %s token renewal failed: %s", identity.label, why, exc.message)
            self._tokens.sync([identity])  # renewed elsewhere meanwhile: then it is not down
            expires = identity.expires_at
            if expires is not None and expires <= self._clock():
                self.release_failure(identity, exc)
            return {**result, "result": "failed", "error": exc.message, "code": exc.code}
        expires = identity.expires_at
        return {**result, "result": "renewed" if changed else "unchanged",
                "token_valid_for_s": None if expires is None else max(0, int(expires - self._clock()))}

    def release_failure(self, identity: Identity, error: ProxyError) -> None:
        """Record a failure found outside a turn (an expired token the refresher could not renew)."""
        def count(value: Any) -> Any:
            health = load(value)
            hold(health, self.owner, 1)
            return dump(health)

        self._state.update(health_key(identity), count)
        with self._lock:
            self._local[id(identity)] += 1
        self.release(identity, error)

    def start_refresher(self, every: float) -> None:
        """Renew tokens in the background, once per process; under gevent this is a greenlet."""
        if self._refresher is not None or self._renewer is None:
            return
        self._refresher = threading.Thread(target=self._refresh_loop, args=(every,), name="token-refresher",
                                           daemon=True)
        self._refresher.start()

    def _refresh_loop(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.refresh_due()
            except Exception:  # the loop must outlive any one bad tick
                logger.exception("token refresher tick failed")

    def settle_shares(self, owner: str, how: str) -> int:
        """``Leases``' ledger: reap, restore or forget ``owner``'s turns in flight on every account."""
        moved = 0
        now = self._clock()
        for identity in list(self.identities):
            counted: list[int] = []

            def change(value: Any) -> Any:
                if value is None:
                    counted[:] = [0]
                    return None
                health = load(value)
                counted[:] = [settle(health, owner, how, now)]
                return dump(health)

            self._state.update(health_key(identity), change)
            moved += counted[0]
        if moved:
            with self._lock:
                self._freed.notify_all()
        return moved

    # -- visibility --------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counts and per-account state for ``/health``; masked, never a secret."""
        self.sync_accounts()  # what any worker changed through the admin API
        now = self._clock()
        stored = self._state.get_many([health_key(i) for i in self.identities])
        health = {id(i): load(v) for i, v in zip(self.identities, stored)}
        accounts = []
        counts = {"healthy": 0, "degraded": 0, "down": 0, "disabled": 0}
        for identity in self.identities:
            h = health[id(identity)]
            counts["disabled" if identity.key in self._disabled else h.state] += 1
            accounts.append({
                **identity.describe(now), "key": public_id(identity), "state": h.state,
                "disabled": identity.key in self._disabled, "reason": h.reason,
                "cooldown_s": max(0, round(h.cooldown_until - now)) if h.state == "down" else 0,
                "last_error": h.last_error, "in_flight": h.in_flight, "ok": h.ok, "failed": h.failed,
                "quota_cooldown_s": {f: round(t - now) for f, t in h.quota_until.items() if t > now},
            })
        return {"total": len(self.identities), **counts, "accounts": accounts}

    def close(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
        for identity in self.identities:
            identity.close()
