"""Scripted answers for agent tests: a queue of replies, one taken per accepted completion turn.

An agent loop needs a different answer on each turn (a tool call, then the
answer that uses its result), and a corrective retry needs a wrong answer
followed by a right one. ``FakeQwen.script("first", "second")`` queues them;
each accepted turn takes the next one, and once the queue is empty the
scenario's ``reply``/``answer`` apply again. The queue is part of the site's
state, so ``reset()`` empties it. Standalone: ``POST /__fake__/script``
with ``{"replies": [...]}``.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import replace
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fake_qwen.wire import detail_response, json_response

#: (method, pattern, handler, kind) rows that FakeQwen turns into its routes.
SCRIPT_ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("POST", "/__fake__/script", "ctl_script", "control"),
)


class ScriptedReplies:
    """Mixin for FakeQwen: the reply queue and its control route."""

    _lock: threading.RLock

    def _init_script(self) -> None:
        self._script: collections.deque[str] = collections.deque()

    def script(self, *replies: str) -> None:
        """Queue answers for the next turns, in order (added after any still queued)."""
        with self._lock:
            self._script.extend(replies)

    @property
    def scripted_left(self) -> int:
        with self._lock:
            return len(self._script)

    def _clear_script(self) -> None:
        with self._lock:
            self._script.clear()

    def _scripted(self, scenario: Any) -> Any:
        """The scenario for one accepted turn: the next queued answer, if any, replaces the reply."""
        with self._lock:
            if not self._script:
                return scenario
            answer = self._script.popleft()
        return replace(scenario, answer=answer, reply=None)

    def _h_ctl_script(self, request: Request, scenario: Any) -> Response:
        body = request.get_json(silent=True)
        replies = body.get("replies") if isinstance(body, dict) else None
        if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
            return detail_response(400, "a JSON object {\"replies\": [strings]} is required")
        self.script(*replies)
        return json_response({"queued": self.scripted_left})
