"""Storing inbound events in Kafka: acks=all, a deadline, and never a false success.

An inbound adapter answers success only after `store` returned: the event is then on every
in-sync replica. When Kafka cannot take it (unreachable, no leader, too slow) `store` raises
`StorageUnavailableError`, which adapters answer with 503 and Retry-After (or a SOAP Fault);
the caller retries, with its idempotency key if it has one. A 503 does not promise that the
event was not stored: a send that timed out may still land; the key makes the retry the same
event.

Each store is an `inbound` hop of the endpoint's item (`bus.telemetry.hub`): a PRODUCER span,
child of the request's SERVER span, whose context the stored record carries.
"""

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from bus.errors import BusError, SchemaRegistryError
from bus.events.codec import EventCodec
from bus.events.event import Event
from bus.kafka_clients import durable_producer
from bus.telemetry.hub import Telemetry

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5  # what a 503 tells the caller: long enough for a leader election


class StorageUnavailableError(BusError):
    """Kafka did not acknowledge the event in time; it must be treated as not stored."""


class EventTooLargeError(BusError):
    """The encoded event is larger than Kafka accepts as one record (the caller's fault)."""


class Ingest:
    """One idempotent producer for all inbound endpoints of a process.

    It connects in the background, so that the HTTP server answers (503) while Kafka is away,
    instead of the process failing to start.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        codec: EventCodec,
        *,
        deadline: float = 10.0,
        telemetry: Telemetry | None = None,
        **producer_options: object,
    ) -> None:
        self.codec = codec
        self.deadline = deadline
        self.telemetry = telemetry or Telemetry.disabled()
        # A send that outlives the answer could still be written after the 503: bound the
        # producer's own wait by the deadline, so that it rarely does (the id makes it harmless
        # when the caller retries with its Idempotency-Key).
        self._bootstrap_servers = bootstrap_servers
        self._options = {"request_timeout_ms": int(deadline * 1000), **producer_options}
        self._producer: AIOKafkaProducer | None = None  # made by start: many runs need none
        self._started = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._producer = durable_producer(self._bootstrap_servers, **self._options)
        self._connecting = asyncio.create_task(self._connect(self._producer))

    async def _connect(self, producer: AIOKafkaProducer) -> None:
        wait = 0.5
        while True:
            try:
                await producer.start()
            except KafkaError as error:
                log.warning("inbound producer cannot reach Kafka yet (%s); retrying", error)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 10.0)
            else:
                self._started.set()
                return

    async def connected(self, within: float) -> bool:
        """Wait up to `within` seconds for the first connection; say whether it is made."""
        try:
            async with asyncio.timeout(within):
                await self._started.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._producer is not None:
            await self._producer.stop()

    async def store(self, topic: str, event: Event, *, item: str) -> None:
        """Return once Kafka acknowledged `event` on `topic`, or raise
        StorageUnavailableError within the deadline. `item` is the inbound item storing it."""
        with self.telemetry.producing("inbound", item, topic) as scope:
            scope.event(event)
            scope.hop.topic = topic
            partition, offset = await self._store(topic, event, scope.carrier())
            scope.hop.partition = partition
            scope.hop.offset = offset
            scope.hop.outcome = "accepted"
            scope.set("messaging.destination.partition.id", str(partition))
            scope.set("messaging.kafka.offset", offset)

    async def _store(self, topic: str, event: Event, trace: Mapping[str, str]) -> tuple[int, int]:
        if self._producer is None or not self._started.is_set():
            raise StorageUnavailableError(
                f"Kafka is not reachable yet; event {event.id} was not stored"
            )
        try:
            record = await self.codec.encode(event, trace)
        except SchemaRegistryError as error:
            raise StorageUnavailableError(
                f"the schema registry is unavailable ({error}); event {event.id} was not stored"
            ) from error
        try:
            async with asyncio.timeout(self.deadline):
                sent = await self._producer.send_and_wait(
                    topic, record.value, key=record.key, headers=list(record.headers)
                )
        except TimeoutError:
            raise StorageUnavailableError(
                f"Kafka did not acknowledge event {event.id} on {topic!r} within "
                f"{self.deadline:g} s"
            ) from None
        except MessageSizeTooLargeError as error:
            raise EventTooLargeError(
                f"event {event.id} is {len(record.value)} bytes as Avro, more than Kafka "
                "accepts as one record (max.request.size / message.max.bytes)"
            ) from error
        except KafkaError as error:
            raise StorageUnavailableError(
                f"Kafka did not acknowledge event {event.id} on {topic!r}: {error}"
            ) from error
        return sent.partition, sent.offset
