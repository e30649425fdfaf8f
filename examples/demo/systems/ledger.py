"""The demo's back door into each system: `GET /_demo/health` and `GET /_demo/ledger`.

A ledger is a system's own record of what it was asked to do (every call, with its
idempotency key), kept apart from the bus's metrics on purpose: the demo and its tests decide
whether anything was lost or duplicated by comparing what the CRM sent with what the ERP and the
gateway received, not by trusting the bus's word for it.
"""

from collections.abc import Callable
from typing import Any

from aiohttp import web

Snapshot = Callable[[], dict[str, Any]]
"""Returns a system's ledger as JSON-ready data, a fresh copy each time."""


def demo_routes(snapshot: Snapshot) -> list[web.RouteDef]:
    """The two `/_demo` routes of a system whose ledger `snapshot` returns."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ledger(request: web.Request) -> web.Response:
        return web.json_response(snapshot())

    return [web.get("/_demo/health", health), web.get("/_demo/ledger", ledger)]
