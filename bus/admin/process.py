"""The admin API of a `bus run` process: built from its flow files and its telemetry."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiohttp

from bus.admin.server import AdminServer
from bus.flows.dlq import StoredLetter, replay
from bus.flows.model import FlowSet, default_dlq
from bus.telemetry.hub import Telemetry
from bus.telemetry.journeys import read_journey


def admin_server_for(
    flows: FlowSet,
    telemetry: Telemetry,
    *,
    bootstrap_servers: str,
    session: aiohttp.ClientSession,
) -> AdminServer | None:
    """The process's admin API as `observability.admin` configures it; None when not asked for.
    Replays made through it are hops of their events' journeys, as those of `bus dlq replay`."""
    settings = flows.observability.admin
    if settings is None:
        return None
    topic = flows.observability.journeys.topic

    async def journey(event_id: str, since: datetime | None) -> dict[str, Any] | None:
        found = await read_journey(bootstrap_servers, topic, event_id, since=since)
        return None if found is None else found.as_json()

    async def send_back(letters: Sequence[StoredLetter]) -> list[str]:
        return await replay(bootstrap_servers, letters, telemetry=telemetry)

    return AdminServer(
        settings,
        board=telemetry.board,
        metrics=telemetry.metrics,
        bootstrap_servers=bootstrap_servers,
        journeys=journey,
        dead_letter_topics=dead_letter_topics(flows),
        replay=send_back,
        session=session,
    )


def dead_letter_topics(flows: FlowSet) -> dict[str, str]:
    """Every item's dead-letter topic, by item name."""
    topics = {item.name: default_dlq(item.name) for item in flows.inbound}
    topics |= {item.name: item.dlq for item in flows.mediation}
    topics |= {item.name: item.dlq for item in flows.outbound}
    return topics
