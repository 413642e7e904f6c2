"""``routes.hangup``: telling a closed client connection from a quiet one, on real local sockets."""

from __future__ import annotations

import socket

import pytest

from routes import hangup


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def test_a_quiet_open_connection_is_not_gone(pair):
    server, _ = pair
    assert hangup.watch({"werkzeug.socket": server})() is False


def test_a_closed_connection_is_gone(pair):
    server, client = pair
    client.close()
    assert hangup.watch({"gunicorn.socket": server})() is True


def test_a_half_read_connection_with_data_waiting_is_not_gone(pair):
    server, client = pair
    client.sendall(b"POST /next HTTP/1.1\r\n")  # a pipelined request: still there, and not consumed by the look
    gone = hangup.watch({"werkzeug.socket": server})
    assert gone() is False and server.recv(64).startswith(b"POST /next")


def test_a_reset_connection_is_gone(pair):
    server, client = pair
    client.sendall(b"x")
    server.recv(1)
    client.close()
    assert hangup.watch({"werkzeug.socket": server})() is True


@pytest.mark.parametrize("environ", [{}, {"werkzeug.socket": None}, {"werkzeug.socket": object()}])
def test_no_socket_no_check(environ):
    assert hangup.watch(environ) is None


def test_tls_sockets_are_left_to_writes():
    class TlsLike:
        def recv(self, n, flags=0): ...
        def fileno(self): return 0
        def getpeercert(self): ...

    assert hangup.watch({"gunicorn.socket": TlsLike()}) is None
