"""Noticing a client that hung up while nothing is being written to it (the site thinking or pausing).

A server learns that a client left only when a write fails, and while the site
is silent nothing is written until the next keep-alive ping (15 s by default).
Meanwhile the turn holds an account slot and an upstream stream the site keeps
generating into. Instead of writing to the client more often, the turn looks
at the client's socket once a second: a socket that reads as end-of-file has
been closed by the client (or by nginx in front, which closes its upstream
connection when its client leaves). Works on werkzeug's server and on
gunicorn's workers, which both put the connection in the WSGI environ.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Any

from flask import has_request_context, request

#: How often a silent turn looks at its client's socket.
CHECK_SECONDS = 1.0

GoneCheck = Callable[[], bool]


def watch(environ: dict[str, Any]) -> GoneCheck | None:
    """A check that says whether this request's client has closed its connection; ``None`` if unknowable."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if not (hasattr(sock, "recv") and hasattr(sock, "fileno")) or hasattr(sock, "getpeercert"):
        return None  # no plain socket to look at (TLS records would read as data): writes will tell

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and not sock.recv(1, socket.MSG_PEEK)  # data waiting: still there
        except ValueError:  # closed here already, or a socket that does not peek
            return False
        except OSError:  # reset by the peer
            return True

    return gone


def watch_current_request() -> GoneCheck | None:
    """``watch`` for the request being served, if any."""
    return watch(request.environ) if has_request_context() else None
