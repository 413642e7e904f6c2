"""CPU cost of the relay's hot path without sockets: SSE decode → classify → translate → encode.

    python -m bench.hot_path [--events 20000] [--profile] [--tools] [--candidates] [--messages]

Feeds a captured-shape answer stream of one-character events, cut into 400-byte reads, through the
same functions the proxy uses, and prints events per second and microseconds per event. ``--tools``
relays the same text through the tool-call translator (a request with ``tools``, an answer without a
call), which scans every piece of content for the start of a call. ``--candidates`` streams two candidate
answers interleaved event by event (§14), half of which the translator drops.
``--messages`` turns the chunks into
Anthropic Messages events (``/v1/messages``) and encodes those instead.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

from qwen_client.wire import Candidates, SSEDecoder, decode_event
from routes.turns import encode_event
from transform.anthropic_stream import EventTranslator
from transform.anthropic_stream import encode_event as encode_message_event
from transform.answer import StreamTranslator
from transform.tool_prompts import parse_agent_spec
from transform.tool_replies import translator_for

TOOLS = {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]}


RESPONSE_IDS = ("9f8fa867-2a3c-40ea-b5ba-36268d21c726", "0c6f1d2e-3b4a-4c5d-8e9f-a0b1c2d3e4f5")


def _created(index: int) -> dict:
    return {"response.created": {"chat_id": "c", "parent_id": "p", "response_id": RESPONSE_IDS[index],
                                 "response_index": str(index)}}


def _event(i: int, response_id: str = RESPONSE_IDS[0]) -> dict:
    """One answer delta shaped like the fixture t2t-stream-thinking-summary.sse."""
    return {"choices": [{"delta": {"role": "assistant", "content": "x", "phase": "answer", "status": "typing"}}],
            "response_id": response_id,
            "usage": {"input_tokens": 827, "output_tokens": i, "characters": 0, "total_tokens": 827 + i,
                      "input_tokens_details": {"text_tokens": 827},
                      "output_tokens_details": {"reasoning_tokens": 0, "text_tokens": i},
                      "prompt_tokens_details": {"cached_tokens": 0}},
            "timestamp": 1787654797}


def relay(chunks: list[bytes], tools: bool = False, messages: bool = False) -> int:
    def plain() -> StreamTranslator:
        return StreamTranslator("chatcmpl-bench", "qwen3.7-plus", 1)

    translator = translator_for(parse_agent_spec(TOOLS), plain, lambda: "call_bench") if tools else plain()
    events = EventTranslator("msg_bench", "claude-sonnet-4-5", ("\nEND",)) if messages else None
    sent = 0
    candidates = Candidates()
    for data in SSEDecoder().iter_payloads(chunks):
        for chunk in translator.feed(decode_event(data, candidates)):
            if events is None:
                sent += len(encode_event(chunk))
            else:
                sent += sum(len(encode_message_event(event)) for event in events.feed(chunk))
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--tools", action="store_true", help="through the tool-call translator")
    parser.add_argument("--candidates", action="store_true", help="two candidate answers, interleaved")
    parser.add_argument("--messages", action="store_true", help="as Anthropic Messages events")
    args = parser.parse_args()
    ids = RESPONSE_IDS if args.candidates else RESPONSE_IDS[:1]
    events = [_created(i) for i in range(len(ids))] + [_event(i, ids[i % len(ids)]) for i in range(args.events)]
    body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)
    chunks = [body[i:i + 400] for i in range(0, len(body), 400)]
    start = time.perf_counter()
    relay(chunks, args.tools, args.messages)
    elapsed = time.perf_counter() - start
    figures = {"events_per_s": args.events / elapsed, "us_per_event": elapsed / args.events * 1e6}
    print(f"{figures['events_per_s']:.0f} events/s, {figures['us_per_event']:.1f} µs per event")
    print(json.dumps(figures))
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(relay, chunks, args.tools, args.messages)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
