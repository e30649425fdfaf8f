"""The TCP ports the demo listens on: which are free, and a clear refusal naming the way to
change one that is taken."""

import socket
from collections.abc import Iterable
from dataclasses import dataclass

from demo.errors import DemoError


@dataclass(frozen=True, slots=True)
class Listener:
    """One port something of the demo will listen on, and how a user changes it."""

    purpose: str
    port: int
    change_with: str  # e.g. "--bus-port or BUS_HTTP_PORT"


def is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port. SO_REUSEADDR as servers bind, so only a
    live listener counts as taken, not connections lingering in TIME_WAIT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free right now (held open together, so no two are the same)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def check_free(listeners: Iterable[Listener]) -> None:
    """Refuse, before anything starts, when a port is taken or used twice."""
    seen: dict[int, Listener] = {}
    problems = []
    for listener in listeners:
        if listener.port in seen:
            problems.append(
                f"port {listener.port} is given both to {seen[listener.port].purpose} and to "
                f"{listener.purpose}; change one with {listener.change_with}"
            )
            continue
        seen[listener.port] = listener
        if not is_free(listener.port):
            problems.append(
                f"port {listener.port} on 127.0.0.1, for {listener.purpose}, is taken by another "
                f"process; choose another with {listener.change_with} (or leave it unset and pass "
                "--free-ports)"
            )
    if problems:
        raise DemoError("\n".join(problems))
