"""Ariane as users run it: the `ariane` command and a server in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ARIANE = str(Path(sys.executable).with_name("ariane"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ariane_env(db_url: str, **extra: str) -> dict[str, str]:
    """The environment of an `ariane` process: this test's database and nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARIANE_")}
    env["ARIANE_DATABASE_URL"] = db_url
    env["ARIANE_LOG_LEVEL"] = "warning"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def ariane(db_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [ARIANE, *args], env=ariane_env(db_url), capture_output=True, text=True, timeout=60
    )
    if check and done.returncode != 0:
        raise AssertionError(f"ariane {' '.join(args)} failed: {done.stderr}")
    return done


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout.strip().splitlines()[-1]


class Server:
    """`ariane serve` on a free port; `kill()` is a crash, `start()` a restart."""

    def __init__(
        self, db_url: str, log: Path, workers: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.db_url = db_url
        self.workers = workers
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        assert self.process is None, "the server is already running"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(ARIANE, "serve", "--host", "127.0.0.1", "--port", str(self.port)),
                    *("--workers", str(self.workers)),
                ],
                env=ariane_env(self.db_url, **self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise AssertionError(f"ariane serve exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"ariane serve did not answer /health:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[Server]:
    """A migrated database and a running server on it."""
    ariane(db_url, "migrate")
    running = Server(db_url, tmp_path / "server.log")
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def admin(server: Server) -> Iterator[httpx.Client]:
    """The admin API, with a token made by `ariane tokens create --role admin`."""
    token = last_line(ariane(server.db_url, "tokens", "create", "--role", "admin"))
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client
