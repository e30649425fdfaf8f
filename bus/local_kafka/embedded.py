"""The embedded default: no bootstrap servers configured means the local broker, on demand."""

import contextlib
from collections.abc import Callable

from bus.config import BusSettings
from bus.errors import BrokerAlreadyRunningError
from bus.local_kafka.broker import LocalKafka
from bus.local_kafka.distribution import KafkaDistribution


def local_kafka_from(settings: BusSettings) -> LocalKafka:
    # Absolute paths: they appear in the broker's command line, by which `stop` recognises it.
    return LocalKafka(
        state_dir=(settings.home / "kafka").resolve(),
        distribution=KafkaDistribution.pinned(settings.kafka_cache_dir.resolve()),
        client_port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
    )


async def bootstrap_servers_for(
    settings: BusSettings, say: Callable[[str], None] = lambda _: None
) -> str:
    """The configured cluster if there is one (never starting a broker), else the local broker."""
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    local = local_kafka_from(settings)
    if not local.status().running:
        say("no KAFKA_BOOTSTRAP_SERVERS configured: starting the local Kafka broker")
        # Another process may start it meanwhile; its broker serves as well as ours.
        with contextlib.suppress(BrokerAlreadyRunningError):
            await local.start()
    for note in local.notes:
        say(note)
    status = local.status()
    say(
        f"using the local Kafka broker at {status.bootstrap_servers} (pid {status.pid}, "
        f"log {status.log_file}); it keeps running until `bus kafka stop`"
    )
    return status.bootstrap_servers
