"""The TCP ports the demo listens on: which are free, and a clear refusal naming the way to
change one that is taken."""

from collections.abc import Iterable
from dataclasses import dataclass

from bus.processes import port_is_free
from demo.errors import DemoError


@dataclass(frozen=True, slots=True)
class Listener:
    """One port something of the demo will listen on, and how a user changes it."""

    purpose: str
    port: int
    change_with: str  # e.g. "--bus-port or BUS_HTTP_PORT"


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
        if not port_is_free(listener.port):
            problems.append(
                f"port {listener.port} on 127.0.0.1, for {listener.purpose}, is taken by another "
                f"process; choose another with {listener.change_with} (or leave it unset and pass "
                "--free-ports)"
            )
    if problems:
        raise DemoError("\n".join(problems))
