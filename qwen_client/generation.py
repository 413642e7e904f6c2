"""The site's calls for generated media (§8): image turns with read-back, video tasks and their status.

A thin layer over ``QwenClient``, in its own module because that one is past
600 lines: everything here is a call the client already knows how to make
(its JSON call, its completion stream) arranged the way generation needs it.
Section numbers refer to ``qwen-web-protocol.md``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from errors import UpstreamError
from transform.generation import event_image_urls, readback_image_urls

if TYPE_CHECKING:
    from identity_pool import Identity
    from qwen_client.client import QwenClient

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: The site's task-status routes, newest first (§8.3).
TASK_STATUS_PATHS = ("/api/v2/task/status/{}", "/api/v1/tasks/status/{}")


class GenerationClient:
    """Generation calls on behalf of one ``Identity`` at a time; remembers which status route exists."""

    def __init__(self, client: QwenClient) -> None:
        self.client = client
        self._status_paths = TASK_STATUS_PATHS

    def image_events(self, identity: Identity, chat_id: str, payload: Mapping[str, Any], tries: int,
                     delay: float) -> Iterator[dict]:
        """An image turn's events; when none of them named an image, the chat read back does (§8.1)."""
        seen = False
        with contextlib.closing(self.client.stream_completion(identity, chat_id, payload)) as events:
            for event in events:
                seen = seen or bool(event_image_urls(event))
                yield event
        if not seen:
            for url in self.read_back(identity, chat_id, readback_image_urls, tries, delay) or ():
                yield {"choices": [{"delta": {"role": "assistant", "content": url, "phase": "image_gen",
                                              "status": "typing"}}]}

    def read_back(self, identity: Identity, chat_id: str, find: Callable[[Any], T], tries: int,
                  delay: float) -> T | None:
        """Read the chat until ``find`` finds something; the site may store a result a moment late."""
        for attempt in range(tries):
            if attempt:
                time.sleep(delay)
            found = find(self.client.call_json(identity, "GET", f"/api/v2/chats/{chat_id}", referer=f"/c/{chat_id}"))
            if found:
                return found
        return None

    def submit_task(self, identity: Identity, chat_id: str, payload: Mapping[str, Any]) -> Any:
        """Post a ``stream: false`` turn (t2v, i2v); its JSON answer names the task (§8.3).

        The body goes as the browser sends it (compact UTF-8), within the size rule like any turn.
        """
        return self.client.call_json(identity, "POST", f"/api/v2/chat/completions?chat_id={chat_id}",
                                 data=self.client.encode_turn(payload), referer=f"/c/{chat_id}")

    def task_status(self, identity: Identity, task_id: str) -> Any:
        """One status read of a video task, from whichever generation of the route the site has (§8.3)."""
        paths = self._status_paths
        for path in paths[:-1]:
            try:
                return self.client.call_json(identity, "GET", path.format(task_id))
            except UpstreamError as exc:
                if exc.code != "upstream_http_404":  # a missing route, not a missing task
                    raise
                logger.info("task status: %s is gone, using the older route from now on", path.format("…"))
                self._status_paths = paths[::-1]
        return self.client.call_json(identity, "GET", paths[-1].format(task_id))
