"""What bus's own child processes and local listeners need from the operating system: shared by
the local broker (bus.local_kafka) and anything else that starts processes or picks ports for
them (the `make run` demo)."""

import ctypes
import os
import signal
import socket
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the child before exec (`preexec_fn`): have Linux send SIGTERM when the parent
    dies, so a killed parent leaves no child behind. Elsewhere it does nothing."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Servers bind with SO_REUSEADDR too, so only a live listener counts as "taken",
        # not connections lingering in TIME_WAIT.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def why_not_listening(error: OSError) -> str:
    """Why a server could not listen, in a few words: 'address already in use', or for a host
    name that does not resolve (errno below 0), what the resolver said."""
    if error.errno is not None and error.errno > 0:
        return os.strerror(error.errno).lower()
    return error.strerror or str(error)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free right now (held open together, so no two are the same).
    Another process may still take one before it is used: callers that can, retry."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((host, 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()
