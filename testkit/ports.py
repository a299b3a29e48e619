"""Free 127.0.0.1 ports for tests and benchmarks (every server they start binds to loopback)."""

from __future__ import annotations

import socket

__all__ = ["free_port", "free_ports_spaced"]

_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port, never one this process was given before: the socket is closed
    before the caller binds, so two calls in a row could otherwise get the same port (a config
    with ext_proc.port == ext_proc.http_port failed a CI run that way)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def free_ports_spaced(count: int, step: int) -> int:
    """A free 127.0.0.1 port ``p`` such that ``p + step * i`` is free for every i < count (the
    ports of model_server.replicas: replica i on each base port + 10 i)."""
    while True:
        base = free_port()
        ports = [base + step * i for i in range(count)]
        if all(_bindable(p) for p in ports[1:]) and not _PORTS_GIVEN.intersection(ports[1:]):
            _PORTS_GIVEN.update(ports)
            return base


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
