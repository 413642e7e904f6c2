"""The emulator for benchmarks, under gevent: thousands of concurrent streams in one process.

    python -m bench.emulator --port 9000                  # the emulator (control API under /__fake__/)
    python -m bench.emulator --port 9001 --replay 50000   # one answer of 50,000 events, at wire speed

The first is the site of ``python -m tests.fake_qwen``, served by gevent's WSGI server instead of
one thread per connection, so it holds as many streams as the proxy does.

The second measures the relay alone. The emulator builds each event as it goes and produces about
20,000 per second, less than one proxy worker relays; so ``--replay`` asks the emulator once, at
start, for an answer of N one-character events, keeps the bytes it wrote (one HTTP chunk per
event, as the site sends them) and serves those same bytes to every turn as fast as the socket
takes them. Models and ``chats/new`` are the emulator's own answers, replayed too.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after patching, as gevent requires)
import json  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402

from gevent.pywsgi import WSGIServer  # noqa: E402
from gevent.server import StreamServer  # noqa: E402
from werkzeug.test import EnvironBuilder  # noqa: E402

from tests.fake_qwen import FakeQwen, make_jwt  # noqa: E402

TOKEN = make_jwt("bench-user")
HEADERS = {"Cookie": f"token={TOKEN}", "version": "0.2.83", "source": "web",
           "Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin",
           "timezone": "Fri Sep 18 2026 12:30:00 GMT+0800", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
DELETED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 39\r\n\r\n"
           b'{"success":true,"data":{"status":true}}')


def _call(fake: FakeQwen, method: str, path: str, body: dict | None = None) -> tuple[str, list, list[bytes]]:
    """One request to the emulator's WSGI app, without a server: status, headers and each write."""
    environ = EnvironBuilder(path=path, method=method, json=body, headers=HEADERS).get_environ()
    started: list = []
    writes = list(fake.app(environ, lambda status, headers, exc_info=None: started.extend([status, headers])))
    return started[0], started[1], writes


def _http(status: str, headers: list, writes: list[bytes], chunked: bool) -> bytes:
    # Set-Cookie too: the site's WAF sets its cookie once, on a first answer, not on every one.
    dropped = ("content-length", "transfer-encoding", "connection", "set-cookie")
    kept = [(k, v) for k, v in headers if k.lower() not in dropped]
    if chunked:
        body = b"".join(b"%x\r\n%s\r\n" % (len(w), w) for w in writes if w) + b"0\r\n\r\n"
        kept.append(("Transfer-Encoding", "chunked"))
    else:
        body = b"".join(writes)
        kept.append(("Content-Length", str(len(body))))
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept) + "\r\n"
    return head.encode() + body


class Site(WSGIServer):
    """gevent's WSGI server with Nagle off, as the real site's front servers have it.

    Without it a reused connection waits for the client's delayed ACK (40 ms) between the
    headers and the body of every answer, which would be counted against the proxy.
    """

    def handle(self, sock, address) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


class ReplaySite:
    """Answers every turn with the same recorded emulator answer, at the speed of the socket."""

    def __init__(self, chars: int) -> None:
        fake = FakeQwen()
        fake.configure(answer="".join(chr(0x61 + i % 26) for i in range(chars)), chunk_chars=1, split_writes=False)
        self.models = _http(*_call(fake, "GET", "/api/v2/models/"), chunked=False)
        self.chat = _http(*_call(fake, "POST", "/api/v2/chats/new", {"models": ["qwen3.7-plus"]}), chunked=False)
        chat_id = json.loads(self.chat.split(b"\r\n\r\n", 1)[1])["data"]["id"]
        message = {"role": "user", "content": "hi", "feature_config": {"output_schema": "phase", "thinking_enabled": False}}
        turn = {"stream": True, "chat_id": chat_id, "model": "qwen3.7-plus", "messages": [message]}
        self.answer = _http(*_call(fake, "POST", f"/api/v2/chat/completions?chat_id={chat_id}", turn), chunked=True)

    def handle(self, sock, address) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = sock.makefile("rb")
        try:
            while True:
                line = rfile.readline()
                if not line:
                    return
                target, length = line.split(b" ")[1], 0
                while (header := rfile.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                rfile.read(length)
                if target.startswith(b"/api/v2/chat/completions"):
                    sock.sendall(self.answer)
                elif target.startswith(b"/api/v2/chats/new"):
                    sock.sendall(self.chat)
                elif target.startswith(b"/api/v2/models"):
                    sock.sendall(self.models)
                elif line.startswith(b"DELETE /api/v2/chats/"):
                    sock.sendall(DELETED)
                else:
                    sock.sendall(NOT_FOUND)
        except OSError:
            pass  # the proxy hung up
        finally:
            rfile.close()
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--replay", type=int, metavar="N", help="serve one recorded answer of N events at wire speed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.replay:
        StreamServer((args.host, args.port), ReplaySite(args.replay).handle, backlog=4096).serve_forever()
    else:
        Site((args.host, args.port), FakeQwen().app, log=None, backlog=4096).serve_forever()


if __name__ == "__main__":
    main()
