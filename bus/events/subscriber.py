"""The subscriber API for internal systems: decoded events with their CloudEvents attributes."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiokafka import TopicPartition

from bus import kafka_clients
from bus.errors import EventDecodeError
from bus.events.catalog import SchemaCatalog, SchemaVersion
from bus.events.codec import EventCodec, SchemaIds
from bus.events.event import Event


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An event and where it was read: commit it once its work is durably done."""

    event: Event
    writer: SchemaVersion
    topic: str
    partition: int
    offset: int
    trace: Mapping[str, str] = field(default_factory=dict)


class Subscriber:
    """Reads events from topics as one member of a consumer group, committing only on request.

    ```python
    async with Subscriber("127.0.0.1:9092", catalog, ["crm.customer-changed.v1"],
                          group_id="billing") as subscriber:
        async for received in subscriber:
            await handle(received.event)
            await subscriber.commit(received)
    ```
    A record that is not a readable event raises an EventDecodeError that names its topic,
    partition and offset; iteration may go on after it (the record is skipped, not committed).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        catalog: SchemaCatalog,
        topics: Sequence[str],
        *,
        group_id: str | None,
        reader: str | None = None,
        registry: SchemaIds | None = None,
        **consumer_options: Any,
    ) -> None:
        self.codec = EventCodec(catalog, registry)
        self.reader = reader
        options = {
            "auto_offset_reset": "earliest",
            "isolation_level": "read_committed",
            **consumer_options,
            "enable_auto_commit": False,
        }
        self._consumer = kafka_clients.consumer(
            *topics, bootstrap_servers=bootstrap_servers, group_id=group_id, **options
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

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

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ReceivedEvent:
        record = await self._consumer.getone()
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        try:
            decoded = await self.codec.decode(
                record.key, record.value or b"", record.headers, self.reader
            )
        except EventDecodeError as error:
            raise type(error)(f"{where}: {error}") from error
        return ReceivedEvent(
            event=decoded.event,
            writer=decoded.writer,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            trace=decoded.trace,
        )

    async def commit(self, received: ReceivedEvent) -> None:
        """Commit the group's position just past `received`."""
        partition = TopicPartition(received.topic, received.partition)
        await self._consumer.commit({partition: received.offset + 1})
