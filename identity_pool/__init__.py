"""Who speaks to the site: the Qwen accounts, their health and cool-downs, token renewal and the token store.

- ``accounts``: ``Identity`` (one account: its token, cookie and own HTTP session),
  ``new_session`` (the ``requests`` session every caller of the site uses),
  ``mask``, ``jwt_claims``, ``parse_cookie``.
- ``pool``: ``IdentityPool`` (round-robin, failover, the breaker, background and
  reactive token renewal), ``Failure`` and ``classify`` (the failure classes),
  ``PoolPolicy`` (the cool-down rules) and ``Health``.
- ``token_store``: ``TokenStore``, renewed tokens on disk, written atomically.

Other folders use the names exported here.
"""

from identity_pool.accounts import Identity, mask, new_session
from identity_pool.pool import IdentityPool

__all__ = ["Identity", "IdentityPool", "mask", "new_session"]
