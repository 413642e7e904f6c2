"""``RedisStore``: the shared state in Redis, for several hosts (``REDIS_URL``).

Each operation is one command or one server-side script, except ``update``,
which is an optimistic ``WATCH``/``MULTI`` transaction retried on conflict.
A short connect timeout makes a dead server a fast error, so the worker falls
back to its own memory instead of hanging a turn; replies get a few seconds,
because a busy host answering late is not an outage (taken for one, it would let
two workers renew one account's token each from their own memory).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis

from identity_pool.state.base import StateStore, StoreError, Updater, decode, encode

#: Local locks ``update`` takes by key (one of these per key hash): see ``RedisStore.update``.
UPDATE_STRIPES = 64

_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_TAKE_DUE = """
local m = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #m > 0 and ARGV[3] == '' then redis.call('ZREM', KEYS[1], unpack(m)) end
if ARGV[3] ~= '' then for _, member in ipairs(m) do redis.call('ZADD', KEYS[1], ARGV[3], member) end end
return m
"""

# ``shares.hold`` in one round trip (the request path's cap): the same arithmetic on the same JSON record.
_HOLD = """
local raw = redis.call('GET', KEYS[1])
local ok, rec = false, nil
if raw then ok, rec = pcall(cjson.decode, raw) end
if not ok or type(rec) ~= 'table' then rec = {} end
local s = type(rec.s) == 'table' and rec.s or {}
local r = type(rec.r) == 'table' and rec.r or {}
local t = type(rec.t) == 'table' and rec.t or {}
local owner = ARGV[1]
local held = (tonumber(s[owner]) or 0) + tonumber(ARGV[2])
if held < 0 then
  local parked = math.max(0, (tonumber(r[owner]) or 0) + held)
  if parked > 0 then r[owner] = parked else r[owner] = nil; t[owner] = nil end
  held = 0
end
if held > 0 then s[owner] = held else s[owner] = nil end
local n = 0
for _, v in pairs(s) do n = n + tonumber(v) end
if next(s) == nil and next(r) == nil then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], cjson.encode({n = n, s = s, r = r, t = t}))
end
return n
"""


class RedisStore(StateStore):
    """The interface over one Redis database; every key is under ``prefix``."""

    kind = "redis"
    shared = True

    def __init__(self, url: str, prefix: str = "qwen2openai:", timeout: float = 3.0, connect_timeout: float = 1.0) -> None:
        try:
            self._r = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=connect_timeout,
                                           health_check_interval=30)
        except ValueError as exc:
            raise StoreError(f"REDIS_URL is not a Redis URL: {exc}") from None
        self._prefix = prefix
        self._unlock = self._r.register_script(_UNLOCK)
        self._take_due = self._r.register_script(_TAKE_DUE)
        self._hold = self._r.register_script(_HOLD)
        self._updating = [threading.Lock() for _ in range(UPDATE_STRIPES)]

    def _k(self, key: str) -> str:
        return self._prefix + key

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreError(f"Redis: {exc}") from None

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        if not keys:
            return []
        return [decode(v) for v in self._call(self._r.mget, [self._k(k) for k in keys])]

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._call(self._r.set, self._k(key), encode(value), px=None if ttl is None else max(1, int(ttl * 1000)))

    def delete(self, key: str) -> None:
        self._call(self._r.delete, self._k(key))

    def update(self, key: str, fn: Updater, ttl: float | None = None) -> Any:
        """``WATCH``, read, ``MULTI``/``EXEC``, retried on conflict; one at a time per key in this process.

        Without the local lock, hundreds of a worker's own requests updating one
        record (an account's turns in flight, with a few accounts) conflict with
        each other and retry without end: measured, 500 concurrent streams on one
        worker fell to 0.04x direct, first bytes waiting over a minute. Conflicts
        are then left to other processes, which are few.
        """
        with self._updating[hash(key) % UPDATE_STRIPES]:
            return self._update(key, fn, ttl)

    def _update(self, key: str, fn: Updater, ttl: float | None) -> Any:
        name = self._k(key)
        result: list[Any] = []

        def apply(pipe: redis.client.Pipeline) -> None:
            value = fn(decode(pipe.get(name)))
            result[:] = [value]
            pipe.multi()
            if value is None:
                pipe.delete(name)
            else:
                pipe.set(name, encode(value), px=None if ttl is None else max(1, int(ttl * 1000)))

        self._call(self._r.transaction, apply, name)
        return result[0]

    def incr(self, key: str, delta: int = 1) -> int:
        return int(self._call(self._r.incrby, self._k(key), delta))

    def hold(self, key: str, owner: str, delta: int) -> int:
        return int(self._call(self._hold, keys=[self._k(key)], args=[owner, int(delta)]))

    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        return bool(self._call(self._r.set, self._k("lock:" + name), owner, nx=True, px=max(1, int(ttl * 1000))))

    def unlock(self, name: str, owner: str) -> None:
        self._call(self._unlock, keys=[self._k("lock:" + name)], args=[owner])

    def schedule(self, queue: str, member: str, at: float) -> int:
        pipe = self._r.pipeline(transaction=False)
        pipe.zadd(self._k(queue), {member: at})
        pipe.zcard(self._k(queue))
        return int(self._call(pipe.execute)[1])

    def unschedule(self, queue: str, member: str) -> None:
        self._call(self._r.zrem, self._k(queue), member)

    def take_due(self, queue: str, now: float, limit: int = 100, requeue_at: float | None = None) -> list[str]:
        again = "" if requeue_at is None else repr(float(requeue_at))
        taken = self._call(self._take_due, keys=[self._k(queue)], args=[now, limit, again])
        return [m.decode() if isinstance(m, bytes) else m for m in taken]

    def take_oldest(self, queue: str, count: int) -> list[str]:
        if count <= 0:
            return []
        return [m.decode() for m, _ in self._call(self._r.zpopmin, self._k(queue), count)]

    def ping(self) -> None:
        self._call(self._r.ping)

    def close(self) -> None:
        self._r.close()
