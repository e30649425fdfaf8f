"""Whether a Kafka bootstrap address answers a metadata request, asked as our clients ask it."""

import asyncio
import contextlib

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError


async def answers_metadata(bootstrap_servers: str, within: float = 3.0) -> bool:
    """True when one of the addresses accepts a TCP connection and returns broker metadata.
    They are tried in turn, all of them within `within` seconds: the cluster answers while any
    one broker does (one down for maintenance must not make every bus process unready)."""
    addresses = [address.strip() for address in bootstrap_servers.split(",") if address.strip()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    for index, address in enumerate(addresses):
        # An even share of the time left, so that an address that does not answer at all
        # (a dropped SYN) cannot use up the time of those after it.
        share = (deadline - loop.time()) / (len(addresses) - index)
        try:
            async with asyncio.timeout(share):
                if await _answers(address, share):
                    return True
        except TimeoutError:
            continue
    return False


async def _answers(address: str, within: float) -> bool:
    host, _, port = address.rpartition(":")
    # A bare TCP probe first: aiokafka logs every refused connection as an error, and a
    # broker that is still booting (or down) refuses many.
    try:
        _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except (OSError, ValueError):  # ValueError: no port number after the colon
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()

    # This address only: given them all, the client would try (and log) the others itself.
    client = AIOKafkaClient(bootstrap_servers=address, request_timeout_ms=int(within * 1000))
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except (KafkaError, OSError):
        return False
    finally:
        await client.close()
