"""What the HTTP senders share: one client per destination, the answer read the same way
(2xx delivered; 408, 429, 5xx and no answer: later, honouring Retry-After; any other
4xx: refused, parked with the answer), and a rate limit per destination."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

import httpx

from ariane.domain.destinations import Destination, retry_after
from ariane.services.bus import GiveUp, RetryLater

USER_AGENT = "Ariane/0.1 (+https://github.com/ariane-cdp)"
# Statuses worth sending again later, besides 5xx.
_LATER = frozenset({408, 425, 429})


class Pacer:
    """At most `rate` sends a second, spread evenly. A destination is sent to by one
    process at a time (the bus's turn), so this bounds what every process sends."""

    def __init__(self) -> None:
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, rate: float | None) -> None:
        if rate is None:
            return
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + 1.0 / rate
        if at > now:
            time.sleep(at - now)


class HTTPSender:
    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self._clients: dict[str, httpx.Client] = {}
        self._pacers: dict[str, Pacer] = {}
        self._lock = threading.Lock()

    def client(self, destination: Destination) -> httpx.Client:
        with self._lock:
            found = self._clients.get(destination.id)
            if found is None or found.timeout.read != destination.timeout:
                found = self._clients[destination.id] = httpx.Client(
                    timeout=destination.timeout, headers={"User-Agent": USER_AGENT}
                )
            return found

    def post(
        self, destination: Destination, url: str, body: bytes, headers: dict[str, str]
    ) -> None:
        """POST `body`, or raise what the bus makes of the failure."""
        self.pacer(destination).wait(destination.rate_limit)
        try:
            answer = self.client(destination).post(url, content=body, headers=headers)
        except httpx.HTTPError as error:
            raise RetryLater(f"no answer from {_host(url)}: {error}") from None
        read_answer(answer, _host(url), self.clock())

    def pacer(self, destination: Destination) -> Pacer:
        with self._lock:
            return self._pacers.setdefault(destination.id, Pacer())

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def read_answer(answer: httpx.Response, host: str, now: datetime) -> str:
    """What the receiver's answer means: its status and text when it took the request;
    `RetryLater` (honouring Retry-After) when it asks to try later or is down; `GiveUp`
    with its answer when it refuses the request as wrong."""
    return read_status(
        answer.status_code, answer.text, answer.headers.get("retry-after"), host, now
    )


def read_status(
    status: int, text: str, retry_after_header: str | None, host: str, now: datetime
) -> str:
    """`read_answer` from the answer's status, text and Retry-After header, whichever
    client got them."""
    said = text[:500]
    if 200 <= status < 300:
        return f"{status} {said}"
    if status in _LATER or status >= 500:
        wait = retry_after(retry_after_header, now)
        raise RetryLater(f"{status} from {host}: {said}", retry_after=wait)
    raise GiveUp(f"{status} from {host}: {said}")


def _host(url: str) -> str:
    return httpx.URL(url).host or url
