"""`bus trace EVENT_ID`: an event's journey, read back from the journey topic."""

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import click

from bus.config import load_settings
from bus.errors import BusError
from bus.flows.model import JourneySettings
from bus.telemetry.journeys import Journey, read_journey, render_journey


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time; write e.g. 2026-11-24T11:59:00Z"
        ) from error
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@click.command()
@click.argument("event_id")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="Print the journey as JSON: root id, hops, summary."
)
@click.option(
    "--topic",
    help="The journey topic [default: the flow files' observability.journeys.topic, else "
    "bus.journeys].",
)
@click.option(
    "--since",
    metavar="ISO-TIME",
    callback=_since,
    help="Read only records written from then on: faster on a long topic, but earlier hops "
    "are left out. UTC unless the time says otherwise.",
)
def trace(
    event_id: str, files: tuple[Path, ...], as_json: bool, topic: str | None, since: datetime | None
) -> None:
    """Show the journey of EVENT_ID: every hop of its root event and of all its descendants,
    in every bus process, in time order; where it failed, where it waits, how to replay it.

    FILES are the flow files given to `bus run`: they say where Kafka and the journey topic
    are. Without them: KAFKA_BOOTSTRAP_SERVERS (else the local broker) and bus.journeys.
    """
    # bus.cli registers this command, so importing it at the top of this module is circular.
    from bus.cli import _checked_flows, _reachable_kafka  # noqa: PLC0415 -- see above

    settings, journeys = load_settings(), JourneySettings()
    if files:
        flows, _ = _checked_flows(files, settings)
        journeys = flows.observability.journeys
        if flows.kafka and flows.kafka.bootstrap_servers:  # as `bus run FILES` does
            servers = flows.kafka.bootstrap_servers
            settings = settings.model_copy(update={"kafka_bootstrap_servers": servers})
    chosen = topic or journeys.topic

    async def read() -> Journey | None:
        bootstrap = await _reachable_kafka(settings)
        return await read_journey(bootstrap, chosen, event_id, since=since)

    journey = asyncio.run(read())
    if journey is None:
        after = f" since {since.isoformat()}" if since else ""
        raise BusError(
            f"no record of the journey topic {chosen!r}{after} names event {event_id!r}; check "
            "the id, and that the flows it went through record journeys "
            "(observability.journeys.enabled, sample_ratio) into this topic, and that it is not "
            "older than the topic's retention"
        )
    if as_json:
        click.echo(json.dumps(journey.as_json(), indent=2))
    else:
        click.echo(render_journey(journey, color=True))  # click.echo strips colour off a TTY
