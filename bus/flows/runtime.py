"""`bus run`: every item of a flow set in one asyncio process, until told to stop: inbound
endpoints on one HTTP server, pollers, mediation flows and outbound deliveries.

Every part gets the process's one `Telemetry` (spans, journeys, metrics, the status board, and
the redactor of the flow files' secrets for the errors hops write), and the board says what
each item is doing: the supervisor sets its state, the runners its consumer.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from bus.admin.process import admin_server_for
from bus.delivery.contract import Delivery
from bus.delivery.plan import delivery_plan_from
from bus.delivery.replies import reply_plan_from
from bus.delivery.runner import DeliveryRunner
from bus.errors import ConfigError
from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec
from bus.events.registry import SchemaRegistryClient
from bus.flows.build import BuiltFlow, build_flow, output_topics
from bus.flows.model import (
    FlowSet,
    HttpSettings,
    Inbound,
    LookupItem,
    Mediation,
    Outbound,
    default_dlq,
)
from bus.flows.runner import BatchTooSlowError, FlowRunner
from bus.flows.steps.enrich import Lookup
from bus.flows.topics import ensure_topics
from bus.inbound.ingest import Ingest
from bus.inbound.server import InboundServer
from bus.plugins import AdapterContext, AdapterRuntime, adapter_named, installed_adapters
from bus.resilience.circuit_breaker import breaker_from
from bus.resilience.guarded_lookup import GuardedLookup
from bus.resilience.rate_limit import limiter_from
from bus.resilience.retry import policy_from
from bus.telemetry.http_client import tracing_config
from bus.telemetry.hub import Telemetry
from bus.telemetry.secrets import secrets_of
from bus.telemetry.status import ItemKind, ItemState, ItemStatus

log = logging.getLogger(__name__)
RESTART_BACKOFF = (1.0, 30.0)  # first and longest wait before a failed flow starts again
HEALTHY_RUN = 60.0  # seconds of running after which a failure starts the backoff afresh
TEARDOWN_S = 10.0  # after the grace period: how long leaving groups and closing may take
INGEST_CONNECT_S = 30.0  # how long the inbound server waits for Kafka before it opens anyway


def select(flows: FlowSet, only: Sequence[str]) -> list[str]:
    """The names of the items to run: those named in `only`, or all."""
    items: list[Inbound | Mediation | Outbound] = [*flows.inbound, *flows.mediation]
    names = [item.name for item in (*items, *flows.outbound)]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ConfigError(
            f"--only names nothing in the flow files: {', '.join(unknown)}; their items are: "
            f"{', '.join(names) or 'none'}"
        )
    return [name for name in names if not only or name in only]


def needed_topics(flows: FlowSet, chosen: set[str]) -> set[str]:
    """Every topic the chosen items read or write."""
    topics: set[str] = set()
    for flow in flows.mediation:
        if flow.name in chosen:
            topics |= output_topics(flow) | set(flow.from_)
    for inbound in flows.inbound:
        if inbound.name in chosen:
            topics |= {inbound.topic, default_dlq(inbound.name)}
    for outbound in flows.outbound:
        if outbound.name in chosen:
            topics |= {*outbound.from_, outbound.dlq}
            if outbound.reply is not None:
                topics.add(outbound.reply.topic)
    return topics


async def run_flows(
    flows: FlowSet,
    catalog: SchemaCatalog,
    *,
    bootstrap_servers: str,
    only: Sequence[str] = (),
    shutdown_grace: float = 30.0,
    stop: asyncio.Event,
    telemetry: Telemetry | None = None,
) -> list[str]:
    """Run the selected items until `stop` is set: the inbound HTTP server and pollers, the
    mediation flows and the outbound deliveries. Then stop accepting requests, let each flow and
    delivery finish its work in hand within `shutdown_grace` seconds and commit. Returns the
    names of those that had to abandon work (uncommitted: the next owner does it again).

    `telemetry` is the caller's to start and close (the admin API shares it); without one, the
    run makes its own from the flow files' `observability` block, and closes it at the end."""
    async with _telemetry_for(flows, bootstrap_servers, telemetry) as chosen_telemetry:
        return await _run(
            flows,
            catalog,
            bootstrap_servers=bootstrap_servers,
            only=only,
            shutdown_grace=shutdown_grace,
            stop=stop,
            telemetry=chosen_telemetry,
        )


@contextlib.asynccontextmanager
async def _telemetry_for(
    flows: FlowSet, bootstrap_servers: str, given: Telemetry | None
) -> AsyncIterator[Telemetry]:
    """The caller's telemetry, or one of the run's own, started and closed with it."""
    if given is not None:
        yield given
        return
    telemetry = Telemetry.from_settings(
        flows.observability, bootstrap_servers, secrets=secrets_of(flows)
    )
    await telemetry.start()
    try:
        yield telemetry
    finally:
        await telemetry.close()


async def _run(
    flows: FlowSet,
    catalog: SchemaCatalog,
    *,
    bootstrap_servers: str,
    only: Sequence[str],
    shutdown_grace: float,
    stop: asyncio.Event,
    telemetry: Telemetry,
) -> list[str]:
    registry_url = flows.kafka.schema_registry if flows.kafka else None
    registry = SchemaRegistryClient(registry_url) if registry_url else None
    codec = EventCodec(catalog, registry)
    chosen = set(select(flows, only))
    await _create_topics(flows, chosen, bootstrap_servers)
    ingest = Ingest(bootstrap_servers, codec, telemetry=telemetry)
    # Outgoing requests carry the current span's traceparent; untraced, the session has no hook.
    session = aiohttp.ClientSession(
        trace_configs=[tracing_config()] if telemetry.tracing.enabled else None
    )
    runtimes: dict[str, AdapterRuntime] = {}
    server: InboundServer | None = None
    unsupervised: list[ItemStatus] = []
    tasks: list[asyncio.Task[None]] = []
    admin = admin_server_for(flows, telemetry, bootstrap_servers=bootstrap_servers, session=session)
    try:
        if admin is not None:  # first: /healthz and /readyz answer while the items start
            await admin.start()
        context = AdapterContext(
            flows, catalog, codec, ingest, session, bootstrap_servers, telemetry=telemetry
        )
        lookups = _lookups(flows, context, runtimes, telemetry)
        built = [
            build_flow(flow, catalog, codec, lookups)
            for flow in flows.mediation
            if flow.name in chosen
        ]
        work: list[tuple[str, Coroutine[Any, Any, None]]] = [
            (flow.plan.name, _supervise(flow, bootstrap_servers, stop, telemetry)) for flow in built
        ]
        work += _add_adapter_items(flows, chosen, context, runtimes, stop=stop, telemetry=telemetry)
        unsupervised = _unsupervised_items(flows, chosen, telemetry)  # adapters put theirs first
        routes = [route for runtime in runtimes.values() for route in runtime.routes()]
        work += [
            (f"{name} adapter", _adapter_work(name, runtime, stop))
            for name, runtime in runtimes.items()
        ]
        tasks += [asyncio.create_task(coroutine) for _, coroutine in work]
        if routes:
            server = await _open_server(flows, ingest, routes, stop, telemetry)
        _enter(unsupervised, ItemState.RUNNING)
        await stop.wait()
        deadline = asyncio.get_running_loop().time() + shutdown_grace
        if server is not None:  # no new requests; those under way are answered
            await server.stop()
            server = None
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        _, pending = await asyncio.wait(tasks, timeout=remaining)
        for task in pending:  # past the deadline: abandon the batch; it was not committed
            task.cancel()
        # Leaving the group and flushing may each wait a request timeout on a dead broker.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TEARDOWN_S)
        return [name for (name, _), task in zip(work, tasks, strict=True) if task in pending]
    finally:
        await _cancel_unfinished(tasks)
        _enter(unsupervised, ItemState.STOPPED)
        if server is not None:
            await server.stop()
        for runtime in runtimes.values():
            await runtime.close()
        await ingest.stop()
        if admin is not None:
            await admin.stop()
        await session.close()
        if registry is not None:
            await registry.close()


def _lookups(
    flows: FlowSet,
    context: AdapterContext,
    runtimes: dict[str, AdapterRuntime],
    telemetry: Telemetry,
) -> dict[str, Lookup]:
    """Every named lookup, from its adapter, guarded by its retry, breaker and rate limit."""
    return {
        item.name: _guarded(
            item,
            _runtime(runtimes, item.adapter, context).add_lookup(item),
            telemetry.board.item(item.name, "lookup"),
        )
        for item in flows.lookups
    }


async def _cancel_unfinished(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel the items still running: when starting failed (the server's port taken), or the
    few that outlived the teardown wait (a dead broker), so that none outlives the run."""
    running = [task for task in tasks if not task.done()]
    for task in running:
        task.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), TEARDOWN_S)


async def _adapter_work(name: str, runtime: AdapterRuntime, stop: asyncio.Event) -> None:
    """An adapter's background work, whose failure is logged at once: nothing else waits on it
    before shutdown, so unlogged it would stop silently."""
    try:
        await runtime.run(stop)
    except Exception:
        log.exception("the %s adapter's background work failed and has stopped", name)
        raise


async def _create_topics(flows: FlowSet, chosen: set[str], bootstrap_servers: str) -> None:
    defaults = flows.topics
    created = await ensure_topics(
        bootstrap_servers,
        needed_topics(flows, chosen),
        partitions=(defaults.partitions if defaults and defaults.partitions else 6),
        replication_factor=defaults.replication_factor if defaults else None,
    )
    if created:
        log.info("created topics: %s", ", ".join(created))


def _add_adapter_items(
    flows: FlowSet,
    chosen: set[str],
    context: AdapterContext,
    runtimes: dict[str, AdapterRuntime],
    *,
    stop: asyncio.Event,
    telemetry: Telemetry,
) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """Hand each chosen inbound and outbound item to its adapter; return the deliveries' work."""
    # Every installed adapter takes part, even without items: it may serve something of its
    # own (the REST adapter's publish API).
    for name in installed_adapters():
        _runtime(runtimes, name, context)
    for item in flows.inbound:
        if item.name in chosen:
            _runtime(runtimes, item.adapter, context).add_inbound(item)
    work: list[tuple[str, Coroutine[Any, Any, None]]] = []
    for outbound in flows.outbound:
        if outbound.name in chosen:
            delivery = _runtime(runtimes, outbound.adapter, context).add_outbound(outbound)
            work.append((outbound.name, _deliver(outbound, delivery, context, stop, telemetry)))
    return work


async def _open_server(
    flows: FlowSet,
    ingest: Ingest,
    routes: Sequence[web.RouteDef],
    stop: asyncio.Event,
    telemetry: Telemetry,
) -> InboundServer | None:
    """The inbound server, listening; None if told to stop before it opened."""
    await ingest.start()
    # Open the doors once Kafka can take events; if it cannot yet, open them anyway: callers
    # get 503 with Retry-After rather than a refused connection.
    connected = asyncio.create_task(ingest.connected(within=INGEST_CONNECT_S))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({connected, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    connected.cancel()
    if stop.is_set():
        return None
    if not connected.result():
        log.warning("Kafka is not reachable yet; inbound requests get 503 until it is")
    http = flows.http or HttpSettings()
    server = InboundServer(http.host, http.port, routes, telemetry=telemetry)
    await server.start()
    return server


def _guarded(item: LookupItem, lookup: Lookup, status: ItemStatus) -> Lookup:
    status.breaker = breaker_from(item.circuit_breaker) if item.circuit_breaker else None
    return GuardedLookup(
        item.name,
        lookup,
        policy_from(item.retry),
        status.breaker,
        limiter_from(item.rate_limit) if item.rate_limit else None,
        status.counters,
    )


def _item(
    telemetry: Telemetry, name: str, kind: ItemKind, dead_letter_topic: str | None = None
) -> ItemStatus:
    status = telemetry.board.item(name, kind)
    status.dead_letter_topic = dead_letter_topic
    return status


def _unsupervised_items(flows: FlowSet, chosen: set[str], telemetry: Telemetry) -> list[ItemStatus]:
    """The items no supervisor runs and that say nothing of their state (inbound endpoints,
    lookups): on the board as running from when the inbound server opens until the run ends.
    An item its adapter runs itself (a poller) is on the board under a kind of its own, put
    there when it was added, and its runner says its state."""
    inbound = [
        _item(telemetry, item.name, "inbound", default_dlq(item.name))
        for item in flows.inbound
        if item.name in chosen
    ]
    return [status for status in inbound if status.kind == "inbound"] + [
        telemetry.board.item(item.name, "lookup") for item in flows.lookups
    ]


def _enter(statuses: Sequence[ItemStatus], state: ItemState) -> None:
    for status in statuses:
        status.enter(state)


def _runtime(
    runtimes: dict[str, AdapterRuntime], name: str, context: AdapterContext
) -> AdapterRuntime:
    if name not in runtimes:
        runtimes[name] = adapter_named(name).runtime(context)
    return runtimes[name]


async def _deliver(
    outbound: Outbound,
    delivery: Delivery,
    context: AdapterContext,
    stop: asyncio.Event,
    telemetry: Telemetry,
) -> None:
    # One plan for all restarts: the circuit breaker remembers the endpoint's state.
    plan = delivery_plan_from(outbound)
    reply = reply_plan_from(outbound.reply) if outbound.reply is not None else None

    async def run_once() -> None:
        runner = DeliveryRunner(
            plan,
            delivery,
            context.codec,
            context.bootstrap_servers,
            reply=reply,
            telemetry=telemetry,
        )
        await runner.run(stop)

    status = _item(telemetry, outbound.name, "outbound", plan.dead_letter_topic)
    await _keep_running(f"delivery {outbound.name}", run_once, stop, status)


async def _supervise(
    flow: BuiltFlow, bootstrap_servers: str, stop: asyncio.Event, telemetry: Telemetry
) -> None:
    batch_size = flow.plan.max_in_flight

    async def run_once() -> None:
        nonlocal batch_size
        while True:
            runner = FlowRunner(flow.plan, flow.processor, bootstrap_servers, telemetry=telemetry)
            runner.batch_size = batch_size
            try:
                await runner.run(stop)
                return
            except BatchTooSlowError as slow:  # not a failure: redo the batch, smaller
                batch_size = max(1, batch_size // 2)
                log.warning("%s; batches of at most %d records from now on", slow, batch_size)

    status = _item(telemetry, flow.plan.name, "mediation", flow.plan.dead_letter_topic)
    await _keep_running(f"flow {flow.plan.name}", run_once, stop, status)


async def _keep_running(
    what: str, run_once: Callable[[], Awaitable[None]], stop: asyncio.Event, status: ItemStatus
) -> None:
    """Run until it returns (told to stop); after a failure (Kafka gone, a send refused) run it
    again, from the last commit, waiting longer each time. `status` says which it is doing."""
    wait = RESTART_BACKOFF[0]
    try:
        while not stop.is_set():
            started = time.monotonic()
            status.enter(ItemState.RUNNING)
            try:
                await run_once()
                return
            except (Exception, asyncio.CancelledError) as error:
                if isinstance(error, asyncio.CancelledError) and _being_cancelled():
                    raise
                # A CancelledError when no one cancelled this task comes from a future cancelled
                # under it (aiokafka cancels pending sends when the broker goes away): a failure
                # like any other, else the item would end quietly with Kafka back and work left.
                if time.monotonic() - started > HEALTHY_RUN:
                    wait = RESTART_BACKOFF[0]  # a new failure after a good run, not a crash loop
                status.enter(ItemState.RESTARTING, error)
                log.exception("%s failed; restarting in %.0f s", what, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            wait = min(wait * 2, RESTART_BACKOFF[1])
    finally:
        status.enter(ItemState.STOPPED)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
