"""The publisher API for internal systems: validated canonical events, stored with acks=all."""

from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from aiokafka.errors import KafkaError
from pydantic import BaseModel

from bus.errors import PublishError
from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec, SchemaIds
from bus.events.event import Event
from bus.events.validation import new_event
from bus.kafka_clients import durable_producer


class Publisher:
    """Publishes events to Kafka; `publish` returns only once every in-sync replica has it.

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
        **producer_options: Any,
    ) -> None:
        self.source = source
        self.codec = EventCodec(catalog, registry)
        self._producer = durable_producer(bootstrap_servers, **producer_options)

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as error:
            raise PublishError(
                f"cannot connect the publisher to Kafka: {error}; check the bootstrap servers"
            ) from error

    async def stop(self) -> None:
        await self._producer.stop()

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
        try:
            await self._producer.send_and_wait(
                topic, record.value, key=record.key, headers=list(record.headers)
            )
        except KafkaError as error:
            raise PublishError(
                f"Kafka did not acknowledge event {event.id} ({event.type}) on topic {topic!r}: "
                f"{error}; the event is not stored, publish it again"
            ) from error
