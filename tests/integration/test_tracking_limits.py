"""The tracking API on a real server, against slow, oversized and unauthenticated uploads.

These need a server that reads the body as it arrives, so they speak HTTP over a socket
to uvicorn: the test client hands the app the whole body at once.
"""

from __future__ import annotations

import base64
import gzip
import os
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from types import TracebackType

import httpx
import orjson
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI

from ariane.bootstrap import Container
from ariane.web.app import create_app
from ariane.web.tracking import READING_PER_INFLIGHT

# How long a test waits for an answer the server owes it.
PATIENCE = 5.0


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@pytest.fixture
def app(container: Container) -> FastAPI:
    return create_app(container)


@pytest.fixture
def server(app: FastAPI) -> Iterator[str]:
    """The app over the test's container, served by uvicorn in a thread; its base URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [listener]})
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        running.should_exit = True
        thread.join(timeout=10)
        listener.close()


class Upload:
    """A chunked POST sent piece by piece over a raw socket, to answer before its end."""

    def __init__(self, base_url: str, path: str, headers: dict[str, str]) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=PATIENCE)
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Transfer-Encoding: chunked"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def finish(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body of the response; a timeout if none comes."""
        received = b""
        while b"\r\n\r\n" not in received:
            received += self._recv()
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        while len(body) < int(headers["content-length"]):
            body += self._recv()
        return int(status_line.split()[1]), headers, body

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        assert data, "the server closed the connection without answering"
        return data


def test_an_unknown_write_key_is_refused_before_the_body_is_read(server: str) -> None:
    with Upload(server, "/v1/batch", {"Authorization": basic("wk_unknown")}) as upload:
        # Not a byte of body: the answer cannot be waiting for it.
        status, headers, body = upload.answer()
    assert status == 401
    assert orjson.loads(body)["code"] == "unauthorized"
    assert headers["connection"] == "close"


@pytest.mark.parametrize("encoding", ["plain", "gzip"])
def test_a_body_over_the_limit_is_refused_while_it_streams(
    server: str, write_key: str, container: Container, encoding: str
) -> None:
    limit = container.settings.max_batch_bytes
    headers = {"Authorization": basic(write_key), "Content-Type": "application/json"}
    # One byte over the limit, sent in pieces, and the body never ends. Random bytes do
    # not compress: the gzip stream is over the limit before what it inflates to.
    over = b" " * (limit + 1)
    if encoding == "gzip":
        headers["Content-Encoding"] = "gzip"
        over = gzip.compress(os.urandom(limit))[: limit + 1]
    with Upload(server, "/v1/batch", headers) as upload:
        for start in range(0, len(over), 64 * 1024):
            upload.send(over[start : start + 64 * 1024])
        status, headers, body = upload.answer()
    assert status == 413
    assert orjson.loads(body)["code"] == "too_large"
    assert f"the request body is over {limit} bytes" in orjson.loads(body)["message"]
    assert headers["connection"] == "close"


def test_a_gzip_body_that_inflates_over_the_limit_is_refused_while_it_streams(
    server: str, write_key: str, container: Container
) -> None:
    limit = container.settings.max_batch_bytes
    deflater = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    # A few kilobytes that inflate to four times the limit; the gzip stream is left open.
    bomb = deflater.compress(b'{"batch": [' + b" " * (4 * limit)) + deflater.flush(
        zlib.Z_SYNC_FLUSH
    )
    assert len(bomb) < limit // 50
    headers = {"Authorization": basic(write_key), "Content-Encoding": "gzip"}
    with Upload(server, "/v1/batch", headers) as upload:
        upload.send(bomb)
        status, _, body = upload.answer()
    assert status == 413
    assert orjson.loads(body)["message"].startswith(
        f"the body once decompressed is over {limit} bytes"
    )


@pytest.mark.parametrize("key_in", ["header", "body"])
def test_slow_uploads_do_not_make_others_wait(
    server: str, write_key: str, container: Container, key_in: str
) -> None:
    container.settings.max_inflight_ingest = 1
    headers = {"Authorization": basic(write_key)} if key_in == "header" else {}
    first = orjson.dumps({"batch": [{"type": "track", "userId": "slow", "event": "E"}]})
    with Upload(server, "/v1/batch", headers) as slow:
        slow.send(first[:10])
        # Let the server take up the slow request before the other one arrives.
        time.sleep(0.3)
        other = httpx.post(
            f"{server}/v1/track",
            json={"userId": "quick", "event": "E"},
            headers={"Authorization": basic(write_key)},
            timeout=PATIENCE,
        )
        assert other.status_code == 200, other.text
        rest = first[10:-1]
        if key_in == "body":
            rest += b',"writeKey":' + orjson.dumps(write_key)
        slow.send(rest + b"}")
        slow.finish()
        status, _, body = slow.answer()
    assert (status, orjson.loads(body)) == (200, {"success": True})


def test_the_write_key_lookup_does_not_hold_up_other_requests(
    server: str, write_key: str, container: Container, db_url: str
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite (WAL) never makes a reader wait, so the lookup cannot be held up")
    engine = sa.create_engine(db_url)
    outcome: dict[str, int] = {}

    def track() -> None:
        response = httpx.post(
            f"{server}/v1/track",
            json={"userId": "u", "event": "E"},
            headers={"Authorization": basic(write_key)},
            timeout=30,
        )
        outcome["status"] = response.status_code

    try:
        with engine.connect() as conn:
            # The key was never looked up, so the request must read `sources`: it waits.
            conn.execute(sa.text("LOCK TABLE sources IN ACCESS EXCLUSIVE MODE"))
            waiting = threading.Thread(target=track)
            waiting.start()
            deadline = time.monotonic() + PATIENCE
            while not _lock_waiters(conn):
                assert time.monotonic() < deadline, "the lookup never reached the database"
                time.sleep(0.02)
            metrics = httpx.get(f"{server}/metrics", timeout=PATIENCE)
            assert metrics.status_code == 200
            assert "status" not in outcome
            conn.rollback()
        waiting.join(timeout=30)
    finally:
        engine.dispose()
    assert outcome == {"status": 200}


def _lock_waiters(conn: sa.Connection) -> int:
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    return int(conn.execute(query).scalar_one())


def test_uploads_being_read_are_bounded(server: str, write_key: str, container: Container) -> None:
    container.settings.max_inflight_ingest = 1
    headers = {"Authorization": basic(write_key)}
    uploads = [Upload(server, "/v1/batch", headers) for _ in range(READING_PER_INFLIGHT)]
    try:
        for upload in uploads:
            upload.send(b'{"batch": [')
        time.sleep(0.3)
        refused = httpx.post(
            f"{server}/v1/track",
            json={"userId": "one-too-many", "event": "E"},
            headers=headers,
            timeout=PATIENCE,
        )
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "overloaded"
    finally:
        for upload in uploads:
            upload.sock.close()


def test_a_body_that_does_not_arrive_in_time_is_refused(
    server: str, app: FastAPI, write_key: str
) -> None:
    app.state.tracking.body_deadline = 0.3
    with Upload(server, "/v1/batch", {"Authorization": basic(write_key)}) as slow:
        slow.send(b'{"batch": [')
        status, _, body = slow.answer()
    assert status == 408
    assert orjson.loads(body)["code"] == "timeout"
