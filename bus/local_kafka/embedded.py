"""The embedded default: no bootstrap servers configured means the local broker, on demand."""

from collections.abc import Callable

from bus.config import BusSettings
from bus.local_kafka.broker import LocalKafka
from bus.local_kafka.distribution import KafkaDistribution


def local_kafka_from(settings: BusSettings) -> LocalKafka:
    return LocalKafka(
        state_dir=settings.home / "kafka",
        distribution=KafkaDistribution.pinned(settings.kafka_cache_dir),
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
    status = local.status()
    if status.running:
        say(f"using the local Kafka broker at {status.bootstrap_servers} (pid {status.pid})")
        return status.bootstrap_servers
    say("no KAFKA_BOOTSTRAP_SERVERS configured: starting the local Kafka broker")
    status = await local.start()
    for note in local.notes:
        say(note)
    say(
        f"local Kafka broker ready at {status.bootstrap_servers} (pid {status.pid}, "
        f"log {status.log_file}); it keeps running until `bus kafka stop`"
    )
    return status.bootstrap_servers
