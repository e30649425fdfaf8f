"""The Kafka clients every part of the bus builds the same way, so the guarantees and the
connection's security are set once.

Every client and connection bus makes comes from here, and takes the process's Kafka security
(`bus.kafka_security.kafka_security()`: TLS, SASL) unless given other `security`, so call sites
pass only the bootstrap servers.

- `durable_producer`: acks=all and the idempotent producer: a send that returns is on every
  in-sync replica, and a retried send is not written twice.
- `group_consumer`: a member of a consumer group that commits by hand, only after the work for
  a record is done, reads only committed transactions, and starts from the beginning of a topic
  it has never read (so nothing produced before the group first ran is skipped).
- `producer`, `consumer`, `admin_client`, `metadata_client`, `connection`: plain clients with
  the caller's options, for what needs no such guarantee (or sets its own, as transactions do).
"""

import asyncio
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import (
    InvalidProducerIdMapping,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.structs import RecordMetadata

from bus.kafka_security import KafkaSecurity, kafka_security

REBALANCE_TIMEOUT_MS = 60_000  # how long the group waits for a member to finish and hand over

# What Kafka answers a producer whose sequence numbers or id it no longer accepts: every later
# send fails the same way, so the producer is replaced by a new one (a new producer id).
# (aiokafka reports the broker's INVALID_PRODUCER_EPOCH as ProducerFenced.)
BROKEN_PRODUCER_ERRORS = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    ProducerFenced,
    InvalidProducerIdMapping,
)


def discard_outcome(delivery: "asyncio.Future[RecordMetadata]") -> None:
    """A done callback for a send no one awaits any more: takes its exception, if any."""
    if not delivery.cancelled():
        delivery.exception()


async def stop_within(producer: AIOKafkaProducer, seconds: float) -> bool:
    """Stop `producer`, giving what it still holds `seconds` to be acknowledged; say whether it
    stopped in time. An idempotent producer flushes before it stops and never expires a batch
    whose partition has a leader it cannot reach, so an unbounded stop would wait out a Kafka
    outage: a process told to stop would not."""
    try:
        await asyncio.wait_for(producer.stop(), seconds)
    except TimeoutError:
        return False
    return True


def security_options(security: KafkaSecurity | None = None) -> dict[str, Any]:
    """aiokafka's keyword options for `security`, by default the process's."""
    return (security if security is not None else kafka_security()).client_options()


def producer(
    bootstrap_servers: str, *, security: KafkaSecurity | None = None, **options: Any
) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, **security_options(security), **options
    )


def durable_producer(bootstrap_servers: str, **options: Any) -> AIOKafkaProducer:
    """A producer whose sends are acknowledged by every in-sync replica; callers may tune
    anything but the two settings the guarantee rests on. `security=` (a KafkaSecurity) is
    taken among the options, as callers pass them on untyped."""
    security = options.pop("security", None)
    if security is not None and not isinstance(security, KafkaSecurity):
        raise TypeError(f"security must be a KafkaSecurity, not {type(security).__name__}")
    options = {**options, "acks": "all", "enable_idempotence": True}
    return producer(bootstrap_servers, security=security, **options)


def consumer(
    *topics: str,
    bootstrap_servers: str,
    security: KafkaSecurity | None = None,
    **options: Any,
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap_servers, **security_options(security), **options
    )


def group_consumer(
    bootstrap_servers: str, group_id: str, *, security: KafkaSecurity | None = None
) -> AIOKafkaConsumer:
    return consumer(
        bootstrap_servers=bootstrap_servers,
        security=security,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
    )


def admin_client(
    bootstrap_servers: str, *, security: KafkaSecurity | None = None, **options: Any
) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, **security_options(security), **options
    )


def metadata_client(
    bootstrap_servers: str, *, security: KafkaSecurity | None = None, **options: Any
) -> AIOKafkaClient:
    return AIOKafkaClient(
        bootstrap_servers=bootstrap_servers, **security_options(security), **options
    )


async def connection(
    host: str,
    port: int,
    *,
    security: KafkaSecurity | None = None,
    request_timeout_ms: int = 10_000,
) -> AIOKafkaConnection:
    """One connection to one broker, connected, with its TLS and SASL handshakes done: unlike
    a client's bootstrap, which logs a refusal and reports only that no broker answered, it
    raises what went wrong (ssl.SSLError, SaslAuthenticationFailed, ...)."""
    conn: AIOKafkaConnection = await create_conn(
        host, port, request_timeout_ms=request_timeout_ms, **security_options(security)
    )
    return conn
