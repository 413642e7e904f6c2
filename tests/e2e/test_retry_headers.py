"""No official SDK's default retry loop may wait more than a few seconds on any answer of ours.

Both official SDKs retry a 429 or 5xx twice by default and sleep for ``Retry-After``
(the Python one up to 120 s, the Node one for any length), unless ``x-should-retry:
false``. Each failure class is met here by each SDK at its default settings, against
the emulator: the call must raise within ``BOUND`` seconds, with an honest
``Retry-After`` left for callers that schedule work. Only the proxy's own admission
refusal, over in a second, invites the SDK to retry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.fake_qwen import make_jwt
from tests.helpers import API_KEY

BOUND = 5.0  # seconds: a few, where the old answers kept the SDKs asleep for 240 s to hours
DEADLINE = 20.0  # seconds after which a test gives up on a call, so a regression fails fast, never hangs
NODE_DIR = Path(__file__).resolve().parents[1] / "node"
CHAT = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Case:
    setup: Callable[[Any, Any], tuple[Any, Any]]  # (make_proxy, fake) -> (proxy, anything to keep alive)
    call: str  # chat | stream | image
    status: int
    code: str
    retry_after: Callable[[int], bool]
    should_retry: str = "false"


def _captcha(make_proxy, fake):
    fake.configure(fault="x5sec")
    return make_proxy(), None


def _captcha_in_stream(make_proxy, fake):
    fake.configure(fault="x5sec_in_stream")
    return make_proxy(), None


def _waf_page(make_proxy, fake):
    fake.configure(fault="waf_html")
    return make_proxy(), None


def _rate_limit(make_proxy, fake):
    fake.configure(fault="rate_limited", rate_limit_hours=3)
    return make_proxy(), None


def _image_quota(make_proxy, fake):
    fake.configure(media_refusal="quota", rate_limit_hours=5)
    return make_proxy(), None


def _image_quota_spent_everywhere(make_proxy, fake):
    fake.configure(media_refusal="quota", rate_limit_hours=5)
    server = make_proxy()
    with pytest.raises(openai.RateLimitError):
        server.client().images.generate(prompt="a fox")  # the only account's image quota is now spent
    return server, None


def _all_accounts_challenged(make_proxy, fake):
    fake.configure(fault="x5sec")
    server = make_proxy()
    with pytest.raises(openai.RateLimitError):
        server.client().chat.completions.create(**CHAT)  # the only account is now down for two minutes
    return server, None


def _all_accounts_down(make_proxy, fake):
    server = make_proxy(COOKIE="", QWEN_TOKEN=make_jwt("user-bare", ttl=-10), AUTO_REFRESH_TOKEN=False)
    with pytest.raises(openai.InternalServerError):
        server.client().chat.completions.create(**CHAT)  # an expired bare token: down for ten minutes
    return server, None


def _admission_full(make_proxy, fake):
    fake.configure(answer="abcdefgh", chunk_chars=2, stall_after_events=3)
    server = make_proxy(MAX_CONCURRENT_REQUESTS=1)
    held = requests.post(server.url + "/v1/chat/completions", stream=True, timeout=DEADLINE,
                         headers={"Authorization": f"Bearer {API_KEY}"}, json={**CHAT, "stream": True})
    chunks = held.iter_content(chunk_size=None)
    assert next(chunks).startswith(b"data: ")  # the one place is taken while this stream is open
    return server, (held, chunks)


CASES = {
    "captcha": Case(_captcha, "chat", 429, "upstream_challenge", lambda s: s == 120),
    "captcha_streamed": Case(_captcha_in_stream, "stream", 429, "upstream_challenge", lambda s: s == 120),
    "waf_page": Case(_waf_page, "chat", 429, "upstream_challenge", lambda s: s == 120),
    "rate_limit_num": Case(_rate_limit, "chat", 429, "upstream_rate_limited", lambda s: s == 3 * 3600),
    "image_quota": Case(_image_quota, "image", 429, "upstream_rate_limited", lambda s: s == 5 * 3600),
    "image_quota_all_spent": Case(_image_quota_spent_everywhere, "image", 429, "all_accounts_quota_spent",
                                  lambda s: 5 * 3600 - 60 < s <= 5 * 3600),
    "all_accounts_challenged": Case(_all_accounts_challenged, "chat", 429, "all_accounts_rate_limited",
                                    lambda s: 60 < s <= 120),
    "all_accounts_down": Case(_all_accounts_down, "chat", 503, "no_account_available", lambda s: 500 < s <= 600),
    # Over in a second: the one answer where the SDK's own quick retry can help, so it is invited.
    "admission_full": Case(_admission_full, "chat", 429, "too_many_concurrent_requests", lambda s: s == 1, "true"),
}


@dataclass
class Outcome:
    elapsed: float
    status: int | None
    code: str | None
    retry_after: str | None
    should_retry: str | None


def _with_deadline(call: Callable[[], Outcome]) -> Outcome:
    """Run ``call`` in a thread and fail at ``DEADLINE`` instead of waiting out the SDK's sleep."""
    result: list[Outcome | BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # reported by the test, not lost in the thread
            result.append(exc)

    thread = threading.Thread(target=run, name="sdk call", daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert result, f"the SDK still had not raised after {DEADLINE:g} s: its retry loop is asleep on our answer"
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _python_sdk(server: Any, call: str) -> Outcome:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY)  # the defaults: two retries
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        if call == "image":
            client.images.generate(prompt="a fox")
        else:
            answer = client.chat.completions.create(**CHAT, stream=call == "stream")
            if call == "stream":
                list(answer)
    elapsed, error = time.monotonic() - started, info.value
    return Outcome(elapsed, error.status_code, (error.body or {}).get("code"),
                   error.response.headers.get("Retry-After"), error.response.headers.get("x-should-retry"))


def _node() -> str:
    node = shutil.which("node")
    if node and (NODE_DIR / "node_modules" / "openai").is_dir():
        return node
    why = "node is not installed" if not node else "tests/node has no node_modules (run npm ci there)"
    if os.environ.get("CI"):
        pytest.fail(f"{why}; .ci/run must provide node and run npm ci in tests/node")
    pytest.skip(f"{why}: the official Node SDK cannot be driven (CI runs these tests)")


def _node_sdk(server: Any, call: str) -> Outcome:
    node = _node()
    result = subprocess.run([node, str(NODE_DIR / "call.mjs"), server.url + "/v1", API_KEY, call],
                            capture_output=True, text=True, timeout=DEADLINE, cwd=NODE_DIR,
                            env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["raised"], seen
    return Outcome(seen["elapsed"], seen["status"], seen["code"], seen["retryAfter"], seen["shouldRetry"])


SDKS = {"python": _python_sdk, "node": _node_sdk}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sdk", sorted(SDKS))
@pytest.mark.parametrize("name", list(CASES))
def test_default_sdks_raise_within_seconds(make_proxy, fake, sdk, name):
    case = CASES[name]
    if sdk == "node":
        _node()  # skip (or fail in CI) before starting anything
    server, keep_alive = case.setup(make_proxy, fake)
    try:
        outcome = _with_deadline(lambda: SDKS[sdk](server, case.call))
    finally:
        fake.release_stalls()
    assert (outcome.status, outcome.code) == (case.status, case.code)
    assert outcome.should_retry == case.should_retry
    assert outcome.retry_after is not None and case.retry_after(int(outcome.retry_after)), outcome.retry_after
    assert outcome.elapsed < BOUND, f"{sdk} SDK took {outcome.elapsed:.1f} s to raise"
    if case.should_retry == "true":  # the SDK did retry: twice, one second each (Retry-After: 1)
        assert outcome.elapsed >= 2.0
    del keep_alive
