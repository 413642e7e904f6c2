"""Who speaks to the site: the Qwen accounts, their health and cool-downs, token renewal and the token store.

- ``accounts``: ``Identity`` (one account: its token, cookie or email and password digest,
  its own HTTP session and proxy),
  ``mask``, ``jwt_claims``, ``parse_cookie``.
- ``sessions``: ``new_session``, the ``requests`` session every caller of the site uses
  (``SiteSession``, with its lean ``send_bytes`` for the calls of every turn).
- ``credentials``: ``parse_account``, what one account line says (cookie, token or
  ``email:password``, and `` proxy=<url>``), and ``secrets_of`` for log redaction.
- ``health``: ``Failure`` and ``classify`` (the failure classes), ``PoolPolicy`` (the
  cool-down rules) and ``Health`` (one account's stored standing).
- ``pool``: ``IdentityPool`` (round-robin, failover, the breaker, background and
  reactive token renewal, sign-in at first use, the run-time account set).
- ``registry``: ``AccountRegistry``, the accounts added, disabled and removed at run
  time (the admin API), kept in the shared store so every worker serves the same set.
- ``tokens``: ``Tokens``, each account's newest token through the shared store, renewed
  once cluster-wide under a lock there.
- ``leases``: ``Leases``, each worker's lease (a heartbeat in the store): the places a worker
  that died held in the shared counts are reaped by a live one; ``shared_count`` reads such a count.
- ``token_store``: ``TokenStore``, the JSON mirror of renewed tokens on disk, written atomically.
- ``state``: the shared state (``StateStore``; SQLite by default, Redis with ``REDIS_URL``,
  memory for one process) that the pool, the conversations and the upload cache use.

Other folders use the names exported here.
"""

from identity_pool.accounts import Identity, mask
from identity_pool.sessions import SiteSession, new_session
from identity_pool.credentials import CredentialError, parse_account, proxy_host, secrets_of
from identity_pool.leases import Leases
from identity_pool.pool import IdentityPool, classify
from identity_pool.registry import public_id
from identity_pool.state import MemoryStore, StateStore, StoreError, open_store
from identity_pool.state.shares import total as shared_count

__all__ = ["CredentialError", "Identity", "IdentityPool", "Leases", "MemoryStore", "SiteSession", "StateStore",
           "StoreError", "classify", "mask", "new_session", "open_store", "parse_account", "proxy_host", "public_id",
           "secrets_of", "shared_count"]
