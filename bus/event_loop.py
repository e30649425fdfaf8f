"""The event loop `bus run` runs on: uvloop when it is installed, for its cheaper callbacks
and sockets (the measurements are in docs/performance.md), else asyncio's own."""

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from bus.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")
Choice = Literal["auto", "uvloop", "asyncio"]


def loop_factory(choice: Choice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop `choice` names (BUS_EVENT_LOOP); None for asyncio's default."""
    if choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 -- optional: absent on Windows
    except ImportError as missing:
        if choice == "uvloop":
            raise ConfigError(
                "BUS_EVENT_LOOP=uvloop but uvloop is not installed; install it "
                "(pip install uvloop) or set BUS_EVENT_LOOP=auto"
            ) from missing
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: Choice = "auto") -> T:
    """`asyncio.run(main)` on the chosen loop."""
    factory = loop_factory(choice)
    log.debug("event loop: %s", "asyncio" if factory is None else "uvloop")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
