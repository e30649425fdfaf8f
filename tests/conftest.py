"""Every test run gets one real Kafka broker on free ports, always stopped at the end."""

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bus.config import BusSettings
from bus.errors import BrokerStartError
from bus.local_kafka import KafkaDistribution, LocalKafka
from bus.processes import free_ports

ROOT = Path(__file__).resolve().parents[1]

# Speed over durability: one partition for internal topics, small segments, no rebalance delay
# (already in the single-node defaults), so consumer-group and transaction tests never idle.
TEST_BROKER_OVERRIDES = {
    "num.partitions": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.num.partitions": "1",
    "log.segment.bytes": str(1024 * 1024),
    "log.retention.check.interval.ms": "60000",
    "auto.create.topics.enable": "false",
}


def free_port() -> int:
    return free_ports(1)[0]


def kafka_cache_dir() -> Path:
    """The jar cache `make` fills, shared by every broker the tests start."""
    cache = BusSettings().kafka_cache_dir
    return cache if cache.is_absolute() else ROOT / cache


def new_broker(state_dir: Path) -> LocalKafka:
    """A broker configured for tests (fast, small, dies with the test run), on free ports; not
    started."""
    client_port, controller_port = free_ports(2)
    return LocalKafka(
        state_dir=state_dir,
        distribution=KafkaDistribution.pinned(kafka_cache_dir()),
        client_port=client_port,
        controller_port=controller_port,
        overrides=TEST_BROKER_OVERRIDES,
        heap="512m",
        die_with_parent=True,
    )


async def start_broker(tmp_path_factory: pytest.TempPathFactory, name: str) -> LocalKafka:
    """A test broker of its own, started (stop it with `.stop()`)."""
    for attempt in range(3):
        broker = new_broker(tmp_path_factory.mktemp(name))
        try:
            await broker.start(ready_within=90.0)
            return broker
        except BrokerStartError as error:
            # Another process may take a free port between choosing it and listening on it.
            if attempt == 2 or "port" not in str(error):
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = asyncio.run(start_broker(tmp_path_factory, "kafka"))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def bootstrap_servers(kafka_broker: LocalKafka) -> str:
    return kafka_broker.bootstrap_servers


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Makes topic names unique to this test and this run: `topic_name("orders")`."""
    test = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:80]
    run = uuid.uuid4().hex[:8]
    return lambda purpose: f"{test}.{purpose}.{run}"


@pytest.fixture
def create_topics(bootstrap_servers: str) -> Callable[..., Awaitable[None]]:
    """`await create_topics(name, ..., partitions=3)` on the test broker."""

    async def create(*names: str, partitions: int = 1) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
            )
        finally:
            await admin.close()

    return create
