"""Reading the running demo over HTTP: the bus's admin API (readiness, items) and the demo
systems' own records of what reached them (their ledgers)."""

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

SYSTEMS = ("crm", "erp", "gateway")


@dataclass(frozen=True, slots=True)
class Ledgers:
    """What each demo system recorded (GET /_demo/ledger), as JSON."""

    crm: dict[str, Any]
    erp: dict[str, Any]
    gateway: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"crm": self.crm, "erp": self.erp, "gateway": self.gateway}


class Observer:
    def __init__(
        self, session: aiohttp.ClientSession, admin_url: str, systems: dict[str, str]
    ) -> None:
        self.session = session
        self.admin_url = admin_url
        self.systems = systems  # name → base URL

    async def ready(self) -> bool:
        """Whether the bus's /readyz answers 200 (False while it cannot be reached)."""
        try:
            async with self.session.get(f"{self.admin_url}/readyz") as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def flows(self) -> dict[str, Any]:
        """GET /flows: every item's state, counters, lag, in-flight records and breaker."""
        flows: dict[str, Any] = await self._json(f"{self.admin_url}/flows")
        return flows

    async def ledgers(self) -> Ledgers:
        crm, erp, gateway = await asyncio.gather(
            *(self._json(f"{self.systems[name]}/_demo/ledger") for name in SYSTEMS)
        )
        return Ledgers(crm=crm, erp=erp, gateway=gateway)

    async def _json(self, url: str) -> Any:
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
            response.raise_for_status()
            return await response.json()
