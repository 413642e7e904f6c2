"""A stand-in for the web servers whose image and video URLs clients send: files, redirects, stalls, on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@dataclass
class Served:
    body: bytes = b""
    content_type: str = "image/png"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    stall_after: int | None = None  # send this many bytes, then hold the connection until released


class MediaHost:
    """Serves ``routes`` on a loopback port and records each request's path and headers."""

    def __init__(self) -> None:
        self.routes: dict[str, Served] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.released = threading.Event()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def serve(self, path: str, body: bytes = b"", **kwargs: Any) -> str:
        self.routes[path] = Served(body, **kwargs)
        return self.url + path

    def _app(self, environ: dict, start_response: Any) -> Any:
        request = Request(environ)
        self.seen.append((request.full_path.rstrip("?"), dict(request.headers)))
        served = self.routes.get(request.path)
        if served is None:
            return Response(b"not here", status=404)(environ, start_response)
        body: Any = served.body if served.stall_after is None else self._stalling(served)
        response = Response(body, status=served.status, content_type=served.content_type, headers=served.headers)
        return response(environ, start_response)

    def _stalling(self, served: Served) -> Iterator[bytes]:
        yield served.body[: served.stall_after]
        self.released.wait(30)

    def __enter__(self) -> MediaHost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
