"""What several `bus` commands do alike: read and check flow files, find Kafka, speak to stderr.

Kept apart from `bus.cli` so that commands defined in other modules (`bus trace`, `bus top`)
can use them without importing the command group that registers them.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import click

from bus.config import BusSettings
from bus.errors import BusError
from bus.events.catalog import SchemaCatalog
from bus.flows.loading import FlowFileError, load_flow_files
from bus.flows.model import FlowSet
from bus.flows.validation import validate_flows
from bus.local_kafka import bootstrap_servers_for
from bus.local_kafka.readiness import answers_metadata


def say(message: str) -> None:
    click.echo(f"bus: {message}", err=True)


def checked_flows(files: Sequence[Path], settings: BusSettings) -> tuple[FlowSet, SchemaCatalog]:
    """The flow files, loaded and validated against the schema catalog (FlowFileError lists
    every problem)."""
    flows = load_flow_files(files)
    catalog = SchemaCatalog.load(settings.schemas_dir)
    problems = validate_flows(flows, catalog)
    if problems:
        raise FlowFileError(problems)
    return flows, catalog


def settings_for(flows: FlowSet, settings: BusSettings) -> BusSettings:
    """The flow files' `kafka.bootstrap_servers` wins over the environment's."""
    if flows.kafka and flows.kafka.bootstrap_servers:
        return settings.model_copy(
            update={"kafka_bootstrap_servers": flows.kafka.bootstrap_servers}
        )
    return settings


async def reachable_kafka(settings: BusSettings, say: Callable[[str], None] = say) -> str:
    """The bootstrap servers, once they answer (the local broker started if none is set). A
    broker that refuses the connection's security (KAFKA_SECURITY_PROTOCOL, SASL, TLS) is
    KafkaAuthenticationError at once, never a retry loop."""
    bootstrap = await bootstrap_servers_for(settings, say=say)
    if not await answers_metadata(bootstrap, within=10.0, strict=True):
        raise BusError(
            f"Kafka at {bootstrap} does not answer a metadata request; check that the cluster "
            "runs and that KAFKA_BOOTSTRAP_SERVERS names it, or unset it to use the local broker"
        )
    return bootstrap
