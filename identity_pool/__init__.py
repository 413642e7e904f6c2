"""Who speaks to the site: the Qwen accounts, their health and cool-downs, token renewal and the token store.

- ``accounts``: ``Identity`` (one account: its token, cookie and own HTTP session),
  ``new_session`` (the ``requests`` session every caller of the site uses),
  ``mask``, ``jwt_claims``, ``parse_cookie``.
- ``pool``: ``IdentityPool`` (round-robin, failover, the breaker, background and
  reactive token renewal), ``Failure`` and ``classify`` (the failure classes),
  ``PoolPolicy`` (the cool-down rules) and ``Health``.
- ``tokens``: ``Tokens``, each account's newest token through the shared store, renewed
  once cluster-wide under a lock there.
- ``token_store``: ``TokenStore``, the JSON mirror of renewed tokens on disk, written atomically.
- ``state``: the shared state (``StateStore``; SQLite by default, Redis with ``REDIS_URL``,
  memory for one process) that the pool, the conversations and the upload cache use.

Other folders use the names exported here.
"""

from identity_pool.accounts import Identity, mask, new_session
from identity_pool.pool import IdentityPool, classify
from identity_pool.state import MemoryStore, StateStore, StoreError, open_store

__all__ = ["Identity", "IdentityPool", "MemoryStore", "StateStore", "StoreError", "classify", "mask", "new_session",
           "open_store"]
