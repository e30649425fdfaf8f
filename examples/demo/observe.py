"""Reading the running demo over HTTP: the bus's admin API (readiness, items, dead letters) and
the demo systems' own records of what reached them (their ledgers)."""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp

SYSTEMS = ("crm", "erp", "gateway")
MAX_LETTERS = 10_000  # the admin API's own limit per listing


@dataclass(frozen=True, slots=True)
class Ledgers:
    """What each demo system recorded (GET /_demo/ledger), as JSON."""

    crm: dict[str, Any]
    erp: dict[str, Any]
    gateway: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"crm": self.crm, "erp": self.erp, "gateway": self.gateway}


@dataclass(frozen=True, slots=True)
class DlqCounts:
    """Letters per dead-letter topic, by the name of the item that writes them."""

    letters: dict[str, int] = field(default_factory=dict)
    topics: dict[str, str] = field(default_factory=dict)

    def added_since(self, before: "DlqCounts") -> dict[str, int]:
        return {flow: n - before.letters.get(flow, 0) for flow, n in self.letters.items()}


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

    async def dlq(self) -> DlqCounts:
        """GET /dlq; a dead-letter topic not created yet holds no letter."""
        answer = await self._json(f"{self.admin_url}/dlq")
        queues = answer["queues"]
        return DlqCounts(
            letters={queue["flow"]: queue["letters"] or 0 for queue in queues},
            topics={queue["flow"]: queue["topic"] for queue in queues},
        )

    async def letters(self, flow: str, total: int) -> list[dict[str, Any]]:
        """The reasons of the first `total` letters of a flow's dead-letter topic."""
        limit = max(1, min(total, MAX_LETTERS))
        answer = await self._json(f"{self.admin_url}/dlq/{flow}?limit={limit}", within=90)
        return [letter["reason"] for letter in answer["letters"] if letter["reason"]]

    async def ledgers(self) -> Ledgers:
        crm, erp, gateway = await asyncio.gather(
            *(self._json(f"{self.systems[name]}/_demo/ledger") for name in SYSTEMS)
        )
        return Ledgers(crm=crm, erp=erp, gateway=gateway)

    async def _json(self, url: str, within: float = 10.0) -> Any:
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=within)) as response:
            response.raise_for_status()
            return await response.json()
