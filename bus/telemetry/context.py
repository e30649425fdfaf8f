"""The hop under way in this task: log lines read their event id, flow, step and trace id here.

`bus.telemetry.hub` sets it for the length of a hop; asyncio gives every task its own copy, so
concurrent hops never see each other's.
"""

from contextvars import ContextVar

from bus.telemetry.hop import Hop

current_hop: ContextVar[Hop | None] = ContextVar("bus_current_hop", default=None)
