"""CPU cost the Responses API adds to the relay's hot path: chat chunks → Responses events → SSE bytes.

    python -m bench.responses_path [--events 20000] [--rounds 5]

Feeds a captured-shape answer stream of one-character events through the chat translator and encodes
each chunk as ``/v1/chat/completions`` does, then the same stream through the chat translator and
``ResponseEvents`` as ``/v1/responses`` does, in alternating rounds, and prints the median microseconds
per event of each and their difference. No sockets: the network side is the same for both routes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from qwen_client.wire import SSEDecoder, decode_event
from routes.responses import encode_events
from routes.turns import encode_event
from transform.answer import StreamTranslator
from transform.openai_responses_events import ResponseEvents


def answer_event(i: int) -> dict:
    """One answer delta shaped like the fixture t2t-stream-thinking-summary.sse."""
    return {"choices": [{"delta": {"role": "assistant", "content": "x", "phase": "answer", "status": "typing"}}],
            "response_id": "9f8fa867-2a3c-40ea-b5ba-36268d21c726",
            "usage": {"input_tokens": 827, "output_tokens": i, "total_tokens": 827 + i,
                      "output_tokens_details": {"reasoning_tokens": 0, "text_tokens": i}},
            "timestamp": 1787654797}


def relay(chunks: list[bytes], responses: bool) -> int:
    translator = StreamTranslator("chatcmpl-bench", "qwen3.7-plus", 1, include_usage=responses)
    events = ResponseEvents("resp_bench", 1, {"model": "qwen3.7-plus"}, lambda prefix: f"{prefix}_bench")
    sent = len(encode_events(events.start())) if responses else 0
    for data in SSEDecoder().iter_payloads(chunks):
        for chunk in translator.feed(decode_event(data)):
            sent += len(encode_events(events.feed(chunk))) if responses else len(encode_event(chunk))
    for chunk in translator.finish():
        sent += len(encode_events(events.feed(chunk))) if responses else len(encode_event(chunk))
    return sent + (len(encode_events(events.finish())) if responses else 0)


def timed(chunks: list[bytes], responses: bool, count: int) -> float:
    start = time.perf_counter()
    relay(chunks, responses)
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    body = b"".join(b"data: " + json.dumps(answer_event(i)).encode() + b"\n\n" for i in range(args.events))
    chunks = [body[i:i + 400] for i in range(0, len(body), 400)]
    chat, responses = [], []
    for _ in range(args.rounds):
        chat.append(timed(chunks, False, args.events))
        responses.append(timed(chunks, True, args.events))
    figures = {"chat_us_per_event": statistics.median(chat), "responses_us_per_event": statistics.median(responses)}
    figures["added_us_per_event"] = figures["responses_us_per_event"] - figures["chat_us_per_event"]
    print(f"chat {figures['chat_us_per_event']:.1f} µs/event, responses {figures['responses_us_per_event']:.1f} "
          f"µs/event, added {figures['added_us_per_event']:.1f} µs/event (median of {args.rounds} rounds)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
