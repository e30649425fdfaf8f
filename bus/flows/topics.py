"""Topics a flow set needs: created when missing, so a fresh cluster runs the flows at once."""

from collections.abc import Iterable

from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from bus import kafka_clients
from bus.errors import ConfigError


async def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    partitions: int,
    replication_factor: int | None = None,
) -> list[str]:
    """Create the missing topics; return their names. Without a replication factor, use as many
    replicas as the cluster has brokers, up to 3."""
    admin = kafka_clients.admin_client(bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = sorted(set(topics) - existing)
        if not missing:
            return []
        if replication_factor is None:
            brokers = len((await admin.describe_cluster())["brokers"])
            replication_factor = max(1, min(3, brokers))
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication_factor) for name in missing]
        )
        for name, code, message in _errors(response):
            if code != TopicAlreadyExistsError.errno:
                raise ConfigError(
                    f"cannot create topic {name!r} ({partitions} partitions, replication "
                    f"{replication_factor}): error {code} {message}; create it yourself or fix "
                    "the flow file's `topics` settings"
                )
        return missing
    except KafkaError as error:
        raise ConfigError(f"cannot check or create the flows' topics: {error}") from error
    finally:
        await admin.close()


def _errors(response: object) -> list[tuple[str, int, str]]:
    found = []
    for entry in getattr(response, "topic_errors", []):
        name, code, *rest = entry
        if code:
            found.append((name, code, str(rest[0]) if rest else ""))
    return found
