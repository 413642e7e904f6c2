"""The retry headers of every error, decided in one place (``ProxyError.headers``)."""

from __future__ import annotations

import pytest

from errors import (
    InvalidRequest, ModelOutputInvalid, ProxyError, RateLimited, ServiceUnavailable, UpstreamError, UpstreamTimeout,
)

# error -> (x-should-retry, Retry-After)
CASES = [
    (RateLimited("admission", retry_after=1), "true", "1"),  # over in a second: an immediate retry can help
    (RateLimited("busy", retry_after=2), "true", "2"),
    (RateLimited("soon", retry_after=1.5), "true", "2"),
    (RateLimited("a little later", retry_after=2.2), "false", "3"),
    (RateLimited("captcha", retry_after=120), "false", "120"),  # challenges and cool-downs: for schedulers
    (RateLimited("daily quota", retry_after=10800), "false", "10800"),
    (ServiceUnavailable("site unreachable", retry_after=10), "false", "10"),
    (ServiceUnavailable("all accounts down", retry_after=599.2), "false", "600"),
    (ServiceUnavailable("no account", retryable=False), "false", None),
    (UpstreamError("broken answer"), "true", None),  # the SDKs' own back-off: 0.5 s, then 1 s
    (UpstreamTimeout("silent site"), "true", None),
    (InvalidRequest("bad field"), "false", None),
    (ModelOutputInvalid("broke the contract"), "false", None),
    (ProxyError("a bug"), "false", None),
]


@pytest.mark.parametrize(("error", "should_retry", "retry_after"), CASES, ids=[c[0].message for c in CASES])
def test_retry_headers(error, should_retry, retry_after):
    headers = error.headers()
    assert headers["x-should-retry"] == should_retry
    assert headers.get("Retry-After") == retry_after
