"""Which Kafka the demo uses: the one given, the local broker already running, or a local
broker started for this run (and stopped at its end), through bus's own local_kafka code."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from bus.config import BusSettings
from bus.errors import BrokerAlreadyRunningError, BusError
from bus.local_kafka import LocalKafka, local_kafka_from
from bus.local_kafka.readiness import answers_metadata
from demo.errors import DemoError
from demo.settings import KAFKA, REPO

READY_WITHIN = 90.0  # a first start on a slow machine formats storage and warms the JVM


@dataclass(frozen=True)
class KafkaInUse:
    bootstrap_servers: str
    started: LocalKafka | None  # the broker this run started and must stop
    description: str
    default_local: bool  # the local broker `bus` finds without any setting (for `bus trace`)


def local_broker(settings: BusSettings, port: int, controller_port: int) -> LocalKafka:
    chosen = settings.model_copy(
        update={"kafka_port": port, "kafka_controller_port": controller_port}
    )
    return local_kafka_from(chosen)


async def existing_kafka(bootstrap_servers: str) -> KafkaInUse:
    if not await answers_metadata(bootstrap_servers, within=10.0):
        raise DemoError(
            f"Kafka at {bootstrap_servers} does not answer a metadata request; check that it "
            "runs and that --kafka / KAFKA_BOOTSTRAP_SERVERS names it, or leave both unset to "
            "use a local broker"
        )
    return KafkaInUse(bootstrap_servers, None, f"Kafka at {bootstrap_servers}", False)


async def local_kafka(broker: LocalKafka, say: Callable[[str], None]) -> KafkaInUse:
    """The local broker under BUS_HOME: the running one as it is, else one started now."""
    status = broker.status()
    default = _is_default(broker)
    if status.running:
        return KafkaInUse(
            status.bootstrap_servers,
            None,
            f"the local Kafka broker already running at {status.bootstrap_servers} "
            f"(pid {status.pid}); left running",
            default and status.bootstrap_servers == f"127.0.0.1:{KAFKA.default}",
        )
    if not broker.distribution.is_fetched():
        cache = broker.distribution.cache_dir
        say(f"fetching the Apache Kafka jars from Maven Central (once, into {cache})")
    say(f"starting a local Kafka broker on {broker.bootstrap_servers} (log {broker.log_file})")
    # If the launcher dies without stopping it, the broker goes too.
    broker.die_with_parent = True
    try:
        status = await broker.start(ready_within=READY_WITHIN)
    except BrokerAlreadyRunningError:  # started by someone else meanwhile: use theirs
        return await local_kafka(broker, say)
    except BusError as error:
        raise DemoError(f"the local Kafka broker did not start: {error}") from error
    return KafkaInUse(
        status.bootstrap_servers,
        broker,
        f"a local Kafka broker at {status.bootstrap_servers} (pid {status.pid}), started for "
        "this run",
        default and broker.client_port == KAFKA.default,
    )


async def stop_broker(broker: LocalKafka, within: float) -> int | None:
    """Stop the broker this run started (SIGKILL after `within` seconds); its pid, or None if
    it was gone already."""
    if not broker.status().running:
        return None
    return await asyncio.to_thread(broker.stop, within)


def _is_default(broker: LocalKafka) -> bool:
    """Whether `bus` commands run from the repository root would find this broker unaided."""
    return broker.state_dir == REPO / ".bus" / "kafka"
