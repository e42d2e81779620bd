"""What the browser tests need besides Ariane: the SDKs' published bundles, checked against
pinned hashes, a website on another origin to load them from, and Debian's Chromium."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
# Git-ignored: the tarballs, once their hash is checked.
CACHE = ROOT / ".cache" / "npm"
REGISTRY = "https://registry.npmjs.org"
CHROMIUM = Path("/usr/bin/chromium")
# Without the networking flags, Chromium reaches for Google's services at every start.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def unavailable(reason: str) -> NoReturn:
    """Skip a test that cannot run here; under CI=true, fail it: CI must run them all."""
    if IN_CI:
        pytest.fail(f"{reason}; under CI=true the browser tests must run")
    pytest.skip(reason)


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    # The registry's `dist.integrity` for this version.
    integrity: str

    @property
    def tarball(self) -> str:
        return f"{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"

    def files(self) -> dict[str, bytes]:
        """The package's files by their path in it (`dist/...`), from the registry once,
        then from the cache; a download whose hash differs from the pinned one fails."""
        cached = CACHE / self.tarball
        if cached.exists():
            data = cached.read_bytes()
        else:
            url = f"{REGISTRY}/{self.name}/-/{self.tarball}"
            try:
                with urllib.request.urlopen(url, timeout=60) as answer:
                    data = answer.read()
            except OSError as exc:
                unavailable(f"cannot download {url} ({exc})")
        algorithm, _, expected = self.integrity.partition("-")
        found = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
        assert found == expected, f"{self.tarball}: {algorithm} {found}, pinned {expected}"
        if not cached.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".part")
            partial.write_bytes(data)
            partial.replace(cached)
        files: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive.getmembers():
                extracted = archive.extractfile(member) if member.isfile() else None
                if extracted is not None:
                    files[member.name.removeprefix("package/")] = extracted.read()
        return files


class Site:
    """A website on its own origin (`http://localhost:PORT`, where Ariane is on
    127.0.0.1): pages and scripts set by the test, served from memory."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = files.get(self.path.split("?", 1)[0])
                if found is None:
                    self.send_error(404)
                    return
                kind, body = found
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}"

    def page(self, path: str, html: str) -> str:
        self.files[path] = ("text/html; charset=utf-8", html.encode())
        return self.url + path

    def script(self, path: str, body: bytes) -> str:
        self.files[path] = ("text/javascript", body)
        return self.url + path

    @contextmanager
    def serving(self) -> Iterator[Site]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(timeout=10)
