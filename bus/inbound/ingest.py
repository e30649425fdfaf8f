"""Storing inbound events in Kafka: acks=all, a deadline, and never a false success.

An inbound adapter answers success only after `store` returned: the event is then on every
in-sync replica. When Kafka cannot take it (unreachable, no leader, too slow) `store` raises
`StorageUnavailableError`, which adapters answer with 503 and Retry-After (or a SOAP Fault);
the caller retries, with its idempotency key if it has one. A 503 does not promise that the
event was not stored: a send that timed out after the producer took it stays in the producer
(the idempotent producer retries it until Kafka takes it, it cannot be called back) and lands
once Kafka is back; the key makes the retry the same event.

So that a Kafka outage does not turn every request into such a send, and does not hold every
caller for the whole deadline: once a send to a topic has timed out, further events for that
topic are refused at once (503, not handed to the producer, so certainly not stored) until the
producer's pending send is acknowledged, which is the producer itself saying Kafka is back (or,
if the producer gave that send up, until RETRY_AFTER_S later, when one event may try again).

Each store is an `inbound` hop of the endpoint's item (`bus.telemetry.hub`): a PRODUCER span,
child of the request's SERVER span, whose context the stored record carries.
"""

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata

from bus.errors import BusError, SchemaRegistryError
from bus.events.codec import EventCodec
from bus.events.event import Event
from bus.kafka_clients import (
    BROKEN_PRODUCER_ERRORS,
    discard_outcome,
    durable_producer,
    stop_within,
)
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
        # The producer's own request timeout is the deadline: a produce request to a broker that
        # stopped answering is given up (and retried) as soon as the caller is answered. It does
        # not call the record back: the idempotent producer retries it until Kafka takes it.
        self._bootstrap_servers = bootstrap_servers
        self._options = {"request_timeout_ms": int(deadline * 1000), **producer_options}
        self._producer: AIOKafkaProducer | None = None  # made by start: many runs need none
        self._started = asyncio.Event()
        # topic -> the send that outlived the deadline there, while Kafka has not acknowledged it
        self._stalled: dict[str, asyncio.Future[RecordMetadata]] = {}
        # topic -> loop time until which events for it are refused after a stalled send failed
        self._cooling: dict[str, float] = {}
        self._closing: set[asyncio.Task[bool]] = set()  # replaced producers, being stopped
        self._connecting: asyncio.Task[None] | None = None
        self._stopping = False

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
        """Stop, giving sends still unacknowledged up to the deadline: every caller has been
        answered by now (those sends got 503), and Kafka may be away for good."""
        self._stopping = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._producer is not None and not await stop_within(self._producer, self.deadline):
            log.warning(
                "inbound: Kafka did not acknowledge what the producer still held within %g s "
                "of stopping (those callers were answered 503)",
                self.deadline,
            )
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

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
        producer = self._producer
        if producer is None or not self._started.is_set():
            raise StorageUnavailableError(
                f"Kafka is not reachable yet; event {event.id} was not stored"
            )
        try:
            record = await self.codec.encode(event, trace)
        except SchemaRegistryError as error:
            raise StorageUnavailableError(
                f"the schema registry is unavailable ({error}); event {event.id} was not stored"
            ) from error
        stalled = self._stalled.get(topic)
        now = asyncio.get_running_loop().time()
        if (stalled is not None and not stalled.done()) or now < self._cooling.get(topic, 0.0):
            raise StorageUnavailableError(
                f"Kafka has not yet acknowledged an earlier event on {topic!r} that took longer "
                f"than {self.deadline:g} s; event {event.id} was not stored"
            )
        delivery: asyncio.Future[RecordMetadata] | None = None
        try:
            async with asyncio.timeout(self.deadline):
                # Cancelled in `send`, the record was never taken (it waited for metadata or
                # buffer space); once `send` returned, the producer holds it until Kafka has it.
                delivery = await producer.send(
                    topic, record.value, key=record.key, headers=list(record.headers)
                )
                sent = await asyncio.shield(delivery)
        except TimeoutError:
            if delivery is None:
                raise StorageUnavailableError(
                    f"Kafka did not take event {event.id} for {topic!r} within "
                    f"{self.deadline:g} s (no metadata for the topic or the send buffer is "
                    "full); it was not stored"
                ) from None
            # Its outcome is no one's to wait for now; taking it spares a "never retrieved" log.
            delivery.add_done_callback(discard_outcome)
            self._stall(topic, delivery, producer)
            raise StorageUnavailableError(
                f"Kafka did not acknowledge event {event.id} on {topic!r} within "
                f"{self.deadline:g} s; the producer keeps it and it may still be stored"
            ) from None
        except MessageSizeTooLargeError as error:
            raise EventTooLargeError(
                f"event {event.id} is {len(record.value)} bytes as Avro, more than Kafka "
                "accepts as one record (max.request.size / message.max.bytes)"
            ) from error
        except KafkaError as error:
            if isinstance(error, BROKEN_PRODUCER_ERRORS):
                self._replace(producer)
            raise StorageUnavailableError(
                f"Kafka did not acknowledge event {event.id} on {topic!r}: {error}"
            ) from error
        return sent.partition, sent.offset

    def _replace(self, broken: AIOKafkaProducer) -> None:
        """Put a new producer (a new producer id) in place of `broken`, whose sequence numbers
        Kafka no longer accepts, so that this process takes events again without a restart.
        (aiokafka's idempotent producer fails, rather than retries, the batches of a partition
        that has had no leader for longer than the request timeout, as a single broker's
        controlled shutdown leaves it; the next batch then has a gap in its sequence numbers,
        which Kafka refuses for good.) Requests meanwhile get 503."""
        if self._producer is not broken or self._stopping:
            return  # another request replaced it already, or no producer is wanted any more
        log.warning(
            "inbound: Kafka refuses the producer's sequence numbers; starting a new producer"
        )
        self._started.clear()
        self._stalled.clear()
        self._cooling.clear()
        fresh = durable_producer(self._bootstrap_servers, **self._options)
        self._producer = fresh
        if self._connecting is not None:
            self._connecting.cancel()
        self._connecting = asyncio.create_task(self._connect(fresh))
        closing = asyncio.create_task(stop_within(broken, self.deadline))
        self._closing.add(closing)
        closing.add_done_callback(self._closed)

    def _closed(self, task: "asyncio.Task[bool]") -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("inbound: stopping the replaced producer failed: %s", task.exception())

    def _stall(
        self, topic: str, delivery: "asyncio.Future[RecordMetadata]", producer: AIOKafkaProducer
    ) -> None:
        """Refuse `topic` until `delivery` is settled, then take events for it again."""
        if topic in self._stalled and not self._stalled[topic].done():
            return
        log.warning(
            "inbound: Kafka did not acknowledge a send on %r within %g s; refusing events for "
            "it (503) until it does",
            topic,
            self.deadline,
        )
        self._stalled[topic] = delivery

        def settled(done: "asyncio.Future[RecordMetadata]") -> None:
            if self._stalled.get(topic) is done:
                del self._stalled[topic]
            if self._producer is not producer:
                return  # a send of a replaced producer says nothing of the new one
            if not done.cancelled() and done.exception() is None:
                log.info("inbound: Kafka acknowledges events on %r again", topic)
            else:
                # Failed, not taken (the producer gives up a batch whose partition has had no
                # leader for its request timeout): Kafka is no better, so refuse a while more
                # before one event may try again, rather than hold every caller once more.
                loop_time = asyncio.get_running_loop().time()
                self._cooling[topic] = loop_time + RETRY_AFTER_S

        delivery.add_done_callback(settled)
