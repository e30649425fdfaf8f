"""`bus trace EVENT_ID`: an event's journey, read back from the journey topic."""

import asyncio
import json
from datetime import datetime
from pathlib import Path

import click

from bus.cli_support import checked_flows, reachable_kafka, settings_for
from bus.config import load_settings
from bus.errors import BusError
from bus.flows.model import JourneySettings
from bus.telemetry.journey_reader import parse_since
from bus.telemetry.journeys import Journey, read_journey, render_journey


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


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
    settings, journeys = load_settings(), JourneySettings()
    if files:
        flows, _ = checked_flows(files, settings)
        journeys = flows.observability.journeys
        settings = settings_for(flows, settings)  # as `bus run FILES` does
    chosen = topic or journeys.topic

    async def read() -> Journey | None:
        bootstrap = await reachable_kafka(settings)
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
