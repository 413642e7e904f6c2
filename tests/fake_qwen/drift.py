"""How the site moved in 2026-07/08 (§14), as switches of the emulator.

- **Two candidate answers** (``Scenario.candidates = 2``): the stream opens with two
  ``response.created`` events (``response_index`` "0" then "1", each its own
  ``response_id``), then the deltas of both answers arrive interleaved, each tagged
  with its ``response_id`` (R1#149). ``candidate_order`` says whose deltas come
  first after the two created events; ``candidate_untagged`` drops the tag from
  some deltas of candidate 0 (§14 says every delta is tagged: an untagged one is
  not a measured form, so the emulator lets it belong to the first answer, the
  reading a client should take). Candidate 1 differs in text, thinking, sources
  and usage, so any leak of it into a reply is visible; ``rival_answer`` sets its
  text, and ``candidate_rival_fails`` ends it in a moderation error tagged with its
  own ``response_id`` (errors carry one, §6.6), while candidate 0 finishes.
- **think_skip** (R1 PR#146): a model whose ``info.meta.think_skip.enable`` is
  ``false`` answers ``thinking_enabled: false`` with the in-stream
  ``invalid_input`` error, after ``response.created``.
- **The browser's header set** (§1.2, R9/R10 measured): a completion without
  ``Sec-Fetch-*``, ``timezone``, ``Connection`` or ``X-Accel-Buffering`` draws the
  x5sec/RGV587 refusal (``require_browser_headers``); Bearer without the cookie
  does too (``require_cookie``, in the server).
- **The whole cookie jar** (R1#132): the WAF sets ``acw_tc`` on the first answer;
  with ``require_waf_cookie`` a completion must carry one it issued, as a browser's
  jar would, not only ``token=``.

Pure functions over :mod:`tests.fake_qwen.wire` values; the server calls them.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterator, Mapping

from tests.fake_qwen.wire import INSPECTION_DETAILS, INVALID_INPUT_DETAILS, TurnRecord, created_event, new_request_id, turn_events

CANDIDATE_ORDERS = ("followed_first", "rival_first")
#: What candidate 1 says instead; tests look for it to prove it never reached a reply.
RIVAL_ANSWER = "An entirely different second candidate answer."
RIVAL_THOUGHT = "A second candidate's own line of thought."
RIVAL_SOURCE = {"title": "Rival source", "url": "https://rival.example.org/page", "hostname": "rival.example.org",
                "snippet": "only candidate 1 cites this"}
#: Deltas per burst while the two answers interleave (cycled): uneven, as a network delivers them.
_BURSTS = (1, 2, 1, 3)
#: Headers whose absence drew RGV587 every time where the full set worked (§1.2).
BROWSER_HEADERS = ("sec-fetch-dest", "sec-fetch-mode", "sec-fetch-site", "timezone", "connection",
                   "x-accel-buffering")


def drift_checks(scenario: Any) -> list[tuple[bool, str]]:
    return [
        (scenario.candidates in (1, 2), "candidates must be 1 or 2"),
        (scenario.candidate_order in CANDIDATE_ORDERS, f"bad candidate_order {scenario.candidate_order!r}"),
    ]


def rival_of(turn: TurnRecord, answer: str = "") -> TurnRecord:
    """Candidate 1 of a turn: its own response id, answer (``RIVAL_ANSWER`` twice by default), thinking and sources."""
    return dataclasses.replace(
        turn, response_id=new_request_id(), answer=answer or RIVAL_ANSWER * 2,
        thinking=[RIVAL_THOUGHT] if turn.thinking else [], titles=["Rival title"] if turn.titles else [],
        search_results=[dict(RIVAL_SOURCE)] if turn.search_results else [])


def answer_events(scenario: Any, turn: TurnRecord, thinking_on: bool, search_on: bool) -> tuple[Iterator[dict], list[str]]:
    """The turn's stream, with a second candidate when the scenario asks, and the response ids of the candidates."""
    if scenario.candidates == 1:
        return turn_events(turn, thinking_on, search_on), [turn.response_id]
    turns = [turn, rival_of(turn, scenario.rival_answer)]
    events = candidate_events(turns, thinking_on, search_on, scenario.candidate_order, scenario.candidate_untagged,
                              scenario.candidate_rival_fails)
    return events, [t.response_id for t in turns]


def candidate_events(turns: list[TurnRecord], thinking_on: bool, search_on: bool, order: str = "followed_first",
                     untagged: bool = False, rival_fails: bool = False) -> Iterator[dict]:
    """Both candidates' streams: the created events in index order, then their deltas interleaved.

    With ``rival_fails``, candidate 1 ends in the output moderation error, tagged with its
    ``response_id`` and ``response_index`` as §6.6 shows such errors, instead of finishing.
    """
    streams = [turn_events(turn, thinking_on, search_on) for turn in turns]
    if rival_fails:
        streams[1] = _failing(streams[1], turns[1].response_id)
    for index, stream in enumerate(streams):
        created = next(stream)
        created["response.created"]["response_index"] = str(index)
        yield created
    tagged = [(index, stream) for index, stream in enumerate(streams)]
    if order == "rival_first":
        tagged.reverse()
    bursts, strip = itertools.cycle(_BURSTS), itertools.cycle((True, False))
    live = list(tagged)
    while live:
        for index, stream in list(live):
            for _ in range(next(bursts)):
                event = next(stream, None)
                if event is None:
                    live.remove((index, stream))
                    break
                if untagged and index == 0 and _is_answer_text(event) and next(strip):
                    del event["response_id"]  # every other answer delta of candidate 0
                yield event


def _failing(stream: Iterator[dict], response_id: str) -> Iterator[dict]:
    """A candidate's stream whose last event (its finish) is replaced by a moderation error of its own."""
    previous = next(stream)
    for event in stream:
        yield previous
        previous = event
    yield {"error": {"code": "data_inspection_failed", "modality": ["text"], "stage": "output",
                     "details": INSPECTION_DETAILS}, "response_id": response_id, "response_index": 1}


def _is_answer_text(event: dict) -> bool:
    delta = event.get("choices", [{}])[0].get("delta", {})
    return delta.get("phase") == "answer" and bool(delta.get("content"))


def thinking_off_refused(meta: Mapping[str, Any] | None, features: Mapping[str, Any]) -> bool:
    """Whether the model refuses this turn's thinking-off gear (think_skip off, R1 PR#146)."""
    think_skip = (meta or {}).get("think_skip")
    return (isinstance(think_skip, Mapping) and think_skip.get("enable") is False
            and features.get("thinking_enabled") is False)


def think_skip_frames(chat_id: str, fid: str) -> list[dict]:
    """The refusal as the site streams it: created, then ``invalid_input``."""
    return [created_event(chat_id, fid, new_request_id()),
            {"error": {"code": "invalid_input", "details": INVALID_INPUT_DETAILS}}]


#: The Aliyun WAF's cookie: set on the first answer to a client without one, then expected back.
WAF_COOKIE = "acw_tc"


def issue_waf_cookie(request: Any, response: Any, issued: set[str]) -> None:
    """Like the site's WAF: a client that did not send the cookie gets one (a browser keeps it in its jar)."""
    if request.path.startswith("/api/") and not request.cookies.get(WAF_COOKIE):
        value = new_request_id().replace("-", "")
        issued.add(value)
        response.set_cookie(WAF_COOKIE, value, max_age=1800, path="/", httponly=True)


def missing_browser_headers(headers: Mapping[str, str]) -> list[str]:
    return [name for name in BROWSER_HEADERS if not headers.get(name, "").strip()]
