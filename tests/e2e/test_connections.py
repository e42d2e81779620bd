"""Connections that send part of a request's headers and stop are closed in time, so
that they cannot hold the server's sockets for good (slowloris)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server, ariane

pytestmark = pytest.mark.slow

DEADLINE = 1.0


def closed_by_server(conn: socket.socket, within: float) -> bool:
    conn.settimeout(within)
    try:
        return conn.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("workers", [1, 2])
def test_connections_that_stop_sending_their_headers_are_closed(
    db_url: str, tmp_path: Path, workers: int
) -> None:
    ariane(db_url, "migrate")
    server = Server(
        db_url,
        tmp_path / "server.log",
        workers=workers,
        env={"ARIANE_REQUEST_HEADER_TIMEOUT": str(DEADLINE)},
    )
    server.start()
    stalled: list[socket.socket] = []
    try:
        for n in range(200):
            conn = socket.create_connection(("127.0.0.1", server.port))
            stalled.append(conn)
            if n % 2:
                conn.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: ariane\r\nContent-Typ")
        # A client that sends a byte now and then is not waited for beyond the deadline.
        trickle = socket.create_connection(("127.0.0.1", server.port))
        stalled.append(trickle)
        started = time.monotonic()
        try:
            for byte in b"GET /health HTTP/1.1\r\nHost: ariane\r\nX-Slow: " + b"a" * 200:
                trickle.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass
        assert time.monotonic() - started < DEADLINE + 2
        # Meanwhile requests that send their headers are answered.
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200

        assert all(closed_by_server(conn, DEADLINE + 5) for conn in stalled)
        # A kept-alive connection between requests is not cut by the deadline.
        with httpx.Client(base_url=server.url, timeout=5) as kept_alive:
            for _ in range(3):
                assert kept_alive.get("/health").status_code == 200
                time.sleep(DEADLINE / 2)
    finally:
        for conn in stalled:
            conn.close()
        server.stop()
