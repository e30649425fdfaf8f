"""Whether a Kafka bootstrap address answers a metadata request, asked as our clients ask it."""

import asyncio
import contextlib

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError


async def answers_metadata(bootstrap_servers: str, within: float = 3.0) -> bool:
    """True when the first address accepts a TCP connection and returns broker metadata."""
    host, _, port = bootstrap_servers.split(",", maxsplit=1)[0].strip().rpartition(":")
    # A bare TCP probe first: aiokafka logs every refused connection as an error, and a
    # broker that is still booting refuses many.
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), within)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(within * 1000)
    )
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()
