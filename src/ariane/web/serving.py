"""`ariane serve`: uvicorn, with a listener of its own for each worker process.

uvicorn's supervisor binds one socket and hands it to every worker. The workers then race
to accept, and the one that wins takes every connection waiting at that moment. Clients
that keep their connections open (the Segment SDKs, a proxy's pool) can all end up on one
process, which Python holds to one core, while the others idle: in 2 runs of 9 of a
benchmark with eight connections over two workers, one worker took all eight. On Linux
each worker instead binds its own socket to the same address with `SO_REUSEPORT`, and
the kernel spreads new connections over the workers by a hash of their addresses.

uvicorn's supervisor is kept as it is (health checks, restarts, signals): it is given a
list of sockets that is empty in the supervisor and, when a worker unpickles it, holds
that worker's own listener.

With several workers, the background loops (`ariane.loops`) run in the supervisor, once,
rather than in every worker beside its requests.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from ariane.bootstrap import build
from ariane.loops import running_loops
from ariane.settings import load_settings
from ariane.web.connections import PROTOCOL

APP = "ariane.web.asgi:app_factory"
# prctl(2): the signal a process receives when its parent dies (Linux).
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
# Seconds between two looks at whether a bus process is still alive, and that one is
# given to end once asked.
BUS_PROCESS_WATCH = 1.0
BUS_PROCESS_GRACE = 10.0

logger = logging.getLogger("uvicorn.error")


class CannotListen(Exception):
    def __init__(self, host: str, port: int, error: OSError) -> None:
        super().__init__(
            f"cannot listen on {host}:{port}: {error.strerror or error};"
            " free it or choose another --port"
        )


def serve(host: str, port: int, workers: int, log_level: str) -> None:
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "workers": workers,
        "log_level": log_level,
        "access_log": False,
        "http": PROTOCOL,
    }
    if workers <= 1 or not reuse_port_supported():
        uvicorn.run(APP, **options)
        return
    # Bound, not listening: it holds the address for the workers (and resolves port 0),
    # fails here rather than in each worker when the address is taken, and receives no
    # connection.
    try:
        family, address = _address(host, port)
        holder = _bind(family, address)
    except OSError as error:
        raise CannotListen(host, port, error) from None
    if _answers(family, holder.getsockname()):
        # Another server of the same user listening with SO_REUSEPORT: binding beside it
        # succeeds, and the two would share the connections.
        holder.close()
        raise CannotListen(host, port, OSError(0, "another server is listening there"))
    try:
        bound = holder.getsockname()
        config = uvicorn.Config(APP, **{**options, "port": bound[1]})
        shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
        logger.info(
            "Ariane serving on http://%s:%d with %d workers, each with its own listener",
            shown,
            bound[1],
            workers,
        )
        _supervise(Multiprocess(config, sockets=OwnListener(family, bound)))
    finally:
        holder.close()


def _supervise(supervisor: Multiprocess) -> None:
    """Run the workers, and the background loops here, giving way to the workers, if the
    settings turn them on; the channels' share of the bus in processes of their own
    (`bus_processes`)."""
    settings = load_settings()
    if not settings.run_loops:
        supervisor.run()
        return
    # The workers read their settings from the environment they are spawned with.
    os.environ["ARIANE_RUN_LOOPS"] = "false"
    container = build(settings)
    count = settings.bus_processes if settings.bus_idle_interval > 0 else 1
    try:
        with running_loops(container, give_way=True, part=(0, count)), BusProcesses(count):
            supervisor.run()
    finally:
        container.close()


class BusProcesses:
    """Bus processes 1 to `count` - 1 (`handlers.share`), started with the block, started
    again when one dies, and stopped when it ends."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.processes: dict[int, BaseProcess] = {}
        self.stopping = threading.Event()
        self.watcher = threading.Thread(target=self._watch, name="bus-processes", daemon=True)

    def __enter__(self) -> BusProcesses:
        for index in range(1, self.count):
            self._start(index)
        if self.count > 1:
            self.watcher.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.join(timeout=BUS_PROCESS_GRACE)
            if process.is_alive():
                process.kill()
                process.join(timeout=BUS_PROCESS_GRACE)

    def _start(self, index: int) -> None:
        spawn = multiprocessing.get_context("spawn")
        process = spawn.Process(
            target=run_bus_process,
            args=(index, self.count, os.getpid()),
            name=f"ariane-bus-{index}",
            daemon=True,
        )
        process.start()
        self.processes[index] = process

    def _watch(self) -> None:
        while not self.stopping.wait(BUS_PROCESS_WATCH):
            for index, process in list(self.processes.items()):
                if not process.is_alive() and not self.stopping.is_set():
                    logger.warning(
                        "bus process %d ended (exit code %s); starting it again",
                        index,
                        process.exitcode,
                    )
                    self._start(index)


def run_bus_process(index: int, count: int, supervisor: int) -> None:
    """A bus process's life: its share of the handlers (`handlers.share`) until it is
    asked to stop, or its supervisor dies."""
    # At once: what it was doing is taken up again from the database, as after a crash of
    # the whole server, which its supervisor's death is.
    _end_with(supervisor, signal.SIGKILL)
    _name(f"ariane-bus-{index}")
    stop = threading.Event()
    for sign in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sign, lambda *_: stop.set())
    container = build(load_settings())
    try:
        with running_loops(container, give_way=True, part=(index, count)):
            stop.wait()
    finally:
        container.close()


def reuse_port_supported() -> bool:
    """Only Linux spreads connections over the sockets that share a port; elsewhere
    `SO_REUSEPORT` hands them all to one of them."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


class OwnListener(list[socket.socket]):
    """Empty where it is made; in the worker process that unpickles it, that worker's own
    listening socket."""

    def __init__(self, family: int, address: tuple[Any, ...]) -> None:
        super().__init__()
        self.family = family
        self.address = address

    def __reduce__(self) -> tuple[Any, ...]:
        return (listener, (self.family, self.address, os.getpid()))


def listener(family: int, address: tuple[Any, ...], supervisor: int) -> list[socket.socket]:
    """A socket bound to `address` alongside the other workers'; uvicorn listens on it."""
    _end_with(supervisor)
    return [_bind(family, address)]


def _end_with(supervisor: int, sign: int = signal.SIGTERM) -> None:
    """Have the kernel stop this process (a worker, a bus process) when its supervisor
    dies, even by SIGKILL: a worker's own listener would otherwise go on taking
    connections beside those of the server started in the dead one's place, and a bus
    process would go on beside the new one's."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sign) != 0:
        logger.warning("cannot ask to end with the supervisor: errno %d", ctypes.get_errno())
    if os.getppid() != supervisor:
        # It died before the request above was made.
        os.kill(os.getpid(), sign)


def _name(name: str) -> None:
    """Name the process as `ps`, `top` and `/proc/PID/comm` show it (Linux; at most 15
    bytes), rather than the interpreter's command line every spawned process shares."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NAME, name.encode()[:15]) != 0:
        logger.warning("cannot name the process %s: errno %d", name, ctypes.get_errno())


def _address(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, address


def _answers(family: int, address: tuple[Any, ...]) -> bool:
    """Whether something accepts connections at `address` (a wildcard: on loopback)."""
    host, port = address[0], address[1]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def _bind(family: int, address: tuple[Any, ...]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
