"""`bus run`: every mediation flow of a flow set in one asyncio process, until told to stop."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from bus.errors import ConfigError
from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec
from bus.events.registry import SchemaRegistryClient
from bus.flows.build import BuiltFlow, build_flow, output_topics
from bus.flows.model import FlowSet
from bus.flows.runner import BatchTooSlowError, FlowRunner
from bus.flows.topics import ensure_topics

log = logging.getLogger(__name__)
RESTART_BACKOFF = (1.0, 30.0)  # first and longest wait before a failed flow starts again
HEALTHY_RUN = 60.0  # seconds of running after which a failure starts the backoff afresh
TEARDOWN_S = 10.0  # after the grace period: how long leaving groups and closing may take


def select(flows: FlowSet, only: Sequence[str]) -> list[str]:
    names = [flow.name for flow in flows.mediation]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ConfigError(
            f"--only names no mediation flow: {', '.join(unknown)}; the flows are: "
            f"{', '.join(names) or 'none'}"
        )
    return [name for name in names if not only or name in only]


async def run_flows(
    flows: FlowSet,
    catalog: SchemaCatalog,
    *,
    bootstrap_servers: str,
    only: Sequence[str] = (),
    shutdown_grace: float = 30.0,
    stop: asyncio.Event,
) -> list[str]:
    """Run the selected flows until `stop` is set; then let each finish its batch within
    `shutdown_grace` seconds and commit. Returns the flows that had to abandon their batch
    (uncommitted: the next owner processes it again)."""
    registry_url = flows.kafka.schema_registry if flows.kafka else None
    registry = SchemaRegistryClient(registry_url) if registry_url else None
    codec = EventCodec(catalog, registry)
    chosen = set(select(flows, only))
    built = [build_flow(flow, catalog, codec) for flow in flows.mediation if flow.name in chosen]
    topics = {t for flow in flows.mediation if flow.name in chosen for t in output_topics(flow)}
    topics |= {t for flow in flows.mediation if flow.name in chosen for t in flow.from_}
    defaults = flows.topics
    created = await ensure_topics(
        bootstrap_servers,
        topics,
        partitions=(defaults.partitions if defaults and defaults.partitions else 6),
        replication_factor=defaults.replication_factor if defaults else None,
    )
    if created:
        log.info("created topics: %s", ", ".join(created))
    try:
        tasks = [asyncio.create_task(_supervise(flow, bootstrap_servers, stop)) for flow in built]
        await stop.wait()
        _, pending = await asyncio.wait(tasks, timeout=shutdown_grace)
        for task in pending:  # past the deadline: abandon the batch; it was not committed
            task.cancel()
        # Leaving the group and flushing may each wait a request timeout on a dead broker.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TEARDOWN_S)
        return [flow.plan.name for flow, task in zip(built, tasks, strict=True) if task in pending]
    finally:
        if registry is not None:
            await registry.close()


async def _supervise(flow: BuiltFlow, bootstrap_servers: str, stop: asyncio.Event) -> None:
    """Run a flow; after a failure (Kafka gone, a send refused) start it again from its last
    commit, waiting longer each time."""
    wait = RESTART_BACKOFF[0]
    batch_size = flow.plan.max_in_flight
    while not stop.is_set():
        runner = FlowRunner(flow.plan, flow.processor, bootstrap_servers)
        runner.batch_size = batch_size
        started = time.monotonic()
        try:
            await runner.run(stop)
            return
        except BatchTooSlowError as slow:
            batch_size = max(1, batch_size // 2)
            log.warning("%s; batches of at most %d records from now on", slow, batch_size)
            continue
        except Exception:
            if time.monotonic() - started > HEALTHY_RUN:
                wait = RESTART_BACKOFF[0]  # a new failure after a good run, not a crash loop
            log.exception("flow %s failed; restarting in %.0f s", flow.plan.name, wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
        wait = min(wait * 2, RESTART_BACKOFF[1])
