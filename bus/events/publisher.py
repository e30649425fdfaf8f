"""The publisher API for internal systems: validated canonical events, stored with acks=all."""

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from pydantic import BaseModel

from bus.errors import PublishError
from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec, SchemaIds
from bus.events.event import Event
from bus.events.validation import new_event
from bus.kafka_clients import (
    BROKEN_PRODUCER_ERRORS,
    discard_outcome,
    durable_producer,
    stop_within,
)

log = logging.getLogger(__name__)


class Publisher:
    """Publishes events to Kafka; `publish` returns only once every in-sync replica has it, or
    raises PublishError, at the latest after `deadline` seconds (Kafka unreachable, no leader).

    ```python
    catalog = SchemaCatalog.load(Path("schemas"))
    async with Publisher("127.0.0.1:9092", catalog, source="/crm") as publisher:
        event = await publisher.publish(
            "crm.customer-changed.v1", "com.acme.crm.CustomerChanged", data, key="c-42"
        )
    ```
    """

    def __init__(
        self,
        bootstrap_servers: str,
        catalog: SchemaCatalog,
        *,
        source: str,
        registry: SchemaIds | None = None,
        deadline: float = 30.0,
        **producer_options: Any,
    ) -> None:
        self.source = source
        self.codec = EventCodec(catalog, registry)
        # The idempotent producer retries a send until Kafka takes it, however long Kafka is
        # away: without a deadline, `publish` would wait out a whole outage.
        self.deadline = deadline
        self._bootstrap_servers = bootstrap_servers
        self._options = producer_options
        self._producer = durable_producer(bootstrap_servers, **producer_options)
        self._started = False  # whether `_producer` is started; a renewed one starts on use
        self._starting = asyncio.Lock()
        self._closing: set[asyncio.Task[bool]] = set()

    async def start(self) -> None:
        try:
            await self._ready_producer()
        except KafkaError as error:
            raise PublishError(
                f"cannot connect the publisher to Kafka: {error}; check the bootstrap servers"
            ) from error

    async def stop(self) -> None:
        """Stop, giving sends still unacknowledged up to `deadline` seconds."""
        stopped = await stop_within(self._producer, self.deadline)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if not stopped:
            log.warning(
                "publisher: Kafka did not acknowledge what it still held within %g s of "
                "stopping; those events may not be stored",
                self.deadline,
            )

    async def _ready_producer(self) -> AIOKafkaProducer:
        """The producer, started. One whose start fails is set aside for a new one, so that
        the next call tries afresh (a client whose start failed cannot be started again)."""
        async with self._starting:
            if not self._started:
                try:
                    await self._producer.start()
                except BaseException:
                    failed = self._producer
                    self._producer = durable_producer(self._bootstrap_servers, **self._options)
                    self._set_aside(failed)
                    raise
                self._started = True
            return self._producer

    def _renew(self, broken: AIOKafkaProducer) -> None:
        """A new producer (a new producer id) in place of `broken`, whose sequence numbers
        Kafka refuses for good (see bus.kafka_clients.BROKEN_PRODUCER_ERRORS), so that the
        next `publish` can succeed without the caller making a new Publisher. The new one
        starts on its first use; the broken one stops in the background."""
        if self._producer is not broken:
            return  # a concurrent publish renewed it already
        log.warning("publisher: Kafka refuses the producer's sequence numbers; using a new one")
        self._producer = durable_producer(self._bootstrap_servers, **self._options)
        self._started = False
        self._set_aside(broken)

    def _set_aside(self, producer: AIOKafkaProducer) -> None:
        closing = asyncio.create_task(stop_within(producer, self.deadline))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def publish(
        self,
        topic: str,
        event_type: str,
        data: Mapping[str, Any] | BaseModel,
        *,
        key: str | None = None,
        subject: str | None = None,
        event_id: str | None = None,
        time: datetime | None = None,
        extensions: Mapping[str, str] | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> Event:
        """Validate `data` against the current schema of `event_type` (a schema full name, which
        becomes ce_type), produce it, and return the event as stored.

        Raises EventValidationError (naming each bad field) before anything is sent, and
        PublishError if Kafka does not acknowledge it.
        """
        event = new_event(
            self.codec.catalog, event_type, data, source=self.source, key=key, subject=subject,
            event_id=event_id, time=time, extensions=extensions,
        )  # fmt: skip
        await self.send(topic, event, trace)
        return event

    async def send(self, topic: str, event: Event, trace: Mapping[str, str] | None = None) -> None:
        """Produce an already built event (its data in Avro-ready Python types)."""
        record = await self.codec.encode(event, trace)
        delivery: asyncio.Future[RecordMetadata] | None = None
        producer = self._producer
        try:
            async with asyncio.timeout(self.deadline):
                producer = await self._ready_producer()
                # Cancelled in `send`, the record was never taken; once `send` returned, the
                # producer holds it until Kafka acknowledges it, whatever happens to this call.
                delivery = await producer.send(
                    topic, record.value, key=record.key, headers=list(record.headers)
                )
                await asyncio.shield(delivery)
        except TimeoutError:
            if delivery is None:
                raise PublishError(
                    f"Kafka did not take event {event.id} ({event.type}) for topic {topic!r} "
                    f"within {self.deadline:g} s (no metadata for the topic, or the send buffer "
                    "is full); the event is not stored, publish it again"
                ) from None
            # Its outcome is no one's to wait for now; taking it spares a "never retrieved" log.
            delivery.add_done_callback(discard_outcome)
            raise PublishError(
                f"Kafka did not acknowledge event {event.id} ({event.type}) on topic {topic!r} "
                f"within {self.deadline:g} s; the producer keeps it, so it may still be stored: "
                "publish it again with the same event_id, so that it stays one event"
            ) from None
        except KafkaError as error:
            if isinstance(error, BROKEN_PRODUCER_ERRORS):
                self._renew(producer)
            raise PublishError(
                f"Kafka did not acknowledge event {event.id} ({event.type}) on topic {topic!r}: "
                f"{error}; the event is not stored, publish it again"
            ) from error
