"""How to speak to the Qwen Chat site (chat.qwen.ai); section numbers refer to ``qwen-web-protocol.md``.

- ``client``: ``QwenClient`` (headers, ``chats/new``, completions, JSON calls,
  token renewal, upload calls) and ``AnswerStream`` (the answer read in the
  background).
- ``catalog``: ``ModelCatalog``, the model list and its cache.
- ``signin``: ``SignIn``, email-and-password sign-in (§2.4): the auth host, then v2, then v1.
- ``wire``: what the site's bytes mean, with no I/O: ``SSEDecoder``, the refusal
  classifier (``classify_payload``, ``error_for_body``, ``error_for_status``),
  ``Candidates`` (which of two candidate answers a stream follows, §14) and
  the upload grant (``StsGrant``, ``parse_grant``).
- ``conversations``: ``Conversations``, which upstream chat a request continues
  (kept in the shared state store, so any worker continues it), and the
  ``ChatJanitor`` that deletes the proxy's own chats, paced.
- ``spare_chats``: ``SpareChats``, a chat made ahead of each new conversation (§4),
  so its first byte waits for one call to the site, not two.
- ``uploads``: ``Uploader``, the one way bytes reach the site (§7); recent uploads
  are kept in the shared state store too.
- ``oss``: Aliyun OSS V4 request signing, by hand (§7.2).
- ``generation``: ``GenerationClient``, the calls for generated images and videos (§8).
- ``cdn``: ``CdnFetcher``, bounded downloads of generated media from the site's CDN.

Other folders use the names exported here.
"""

from qwen_client.cdn import CdnFetcher
from qwen_client.catalog import ModelCatalog
from qwen_client.client import AnswerStream, QwenClient
from qwen_client.conversations import Conversations
from qwen_client.generation import GenerationClient
from qwen_client.uploads import Uploader

__all__ = ["AnswerStream", "CdnFetcher", "Conversations", "GenerationClient", "ModelCatalog", "QwenClient", "Uploader"]
