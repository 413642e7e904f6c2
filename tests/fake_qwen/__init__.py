"""The emulator of chat.qwen.ai's private web API that every test runs against, over real loopback sockets.

- ``server``: ``FakeQwen`` (the site's state, routes, gates and switches, ``Scenario``)
  and ``FakeQwenServer`` (it on a loopback port); ``python -m tests.fake_qwen --port 9000``.
- ``wire``: what the site's bytes look like: tokens (``make_jwt``), model objects,
  envelopes, fault bodies (``FAULTS``), events and SSE framing.
- ``auth``: session profiles, sign-in and token renewal.
- ``agents``: scripted replies for tool-calling tests.
- ``uploads``: getstsToken, the OSS PUT it signs for, and document parsing.
- ``media_out``: image and video generation, with their tasks and CDN.
- ``drift``: how the site moved in 2026 (§14): two candidate answers, think_skip refusals,
  the browser header gate and the WAF cookie.

It does not import the proxy: it is the site, not a helper of the client.
"""

from tests.fake_qwen.server import DEFAULT_MODELS, FAULTS, FakeQwen, FakeQwenServer, Scenario, make_jwt

__all__ = ["DEFAULT_MODELS", "FAULTS", "FakeQwen", "FakeQwenServer", "Scenario", "make_jwt"]
