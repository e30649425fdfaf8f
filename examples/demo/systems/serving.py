"""Serving one system's aiohttp application on a loopback port."""

from dataclasses import dataclass

from aiohttp import web

HOST = "127.0.0.1"
"""Loopback only: the demo systems take demo secrets and are no one else's business."""


@dataclass
class Served:
    runner: web.AppRunner
    url: str
    """Where it listens, e.g. http://127.0.0.1:9201 (the real port when 0 was asked for)."""

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve(app: web.Application, port: int) -> Served:
    """Start `app` on 127.0.0.1:`port` (0: any free port) and return where it listens."""
    # No access log: the systems' own log lines say what matters, and the bus logs every call.
    # A short shutdown: a CRM call still retrying its webhook is not worth waiting 60 s for.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return Served(runner, f"http://{HOST}:{bound}")
