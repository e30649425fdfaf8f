"""A polling source: fetch an external collection every so often, publish each new item once.

The poller is generic over a *fetch* function (`Fetch`): given the cursor's position, it yields
pages of items, each with the position to keep once that page is published. REST's
`PollingClient.pages` is one; a SOAP poller would be another. For each page the poller

1. turns every item it has not published before into an event (the inbound item's `event`
   block, expressions over `item`), with a deterministic id: a UUIDv5 of the poller's name and
   the item's identity, so the same item always gets the same id;
2. dead-letters what cannot become an event (and what the fetch could not read) to `<name>.dlq`;
3. writes the events, the dead letters and the new cursor in ONE Kafka transaction of its
   transactional producer (`bus.poll.<name>`, acks=all).

So whatever happens (a crash, a lost connection, a failed commit), a page's events and its cursor
are committed together or not at all: read_committed readers see each item once, and a restarted
poller goes on from the last committed cursor. A second poller with the same name fences the
first: its open transaction is aborted and it can commit nothing more (`PollerFencedError`).

An item's identity is its whole content (canonical JSON) unless an `identity` expression says
otherwise; the cursor remembers the identities of the last `remember` items published (or
dead-lettered) and skips them when they come again: a re-polled page, an inclusive `since`
boundary, or a whole collection returned again after its ETag changed.

Failures of the fetch (`PollFailedError`: no connection, a timeout, 5xx, 429) are logged and the
poll is tried again after a backoff (`RetryPolicy.delay`, the server's Retry-After first); they
never stop the poller. Kafka failures restart it from its committed cursor, after a backoff.

Each item written (an event, or a dead letter) is an `inbound` hop of the poller's item
(`bus.telemetry.hub`), its event's record carrying the hop's trace context; the hops end when the
page's transaction is decided: accepted (or dead-lettered) with where the record landed once it
commits, failed if it does not. The poller's item on the status board (kind `poller`) is running
while it polls, restarting while it waits to poll (or start) again after a failure, and stopped
once it returns.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerFenced
from aiokafka.structs import RecordMetadata

from bus import kafka_clients
from bus.errors import BusError, EventValidationError
from bus.events.catalog import SchemaCatalog
from bus.events.codec import EventCodec, KafkaRecord
from bus.events.event import Event
from bus.flows.dead_letters import DeadLetter, InputRecord, now
from bus.flows.expressions import Expression, ExpressionError
from bus.flows.model import InboundEvent, default_dlq
from bus.inbound.mapping import InboundMapping, MappingError
from bus.polling.cursor_store import DEFAULT_REMEMBER, CursorState, CursorStore, SeenItems
from bus.resilience.retry import RetryPolicy
from bus.telemetry.hop import Output
from bus.telemetry.hub import HopScope, Telemetry
from bus.telemetry.status import ItemState

log = logging.getLogger(__name__)

POLL_NAMESPACE = uuid.UUID("427ad236-b93b-4cc4-aa75-ad407598e4ac")
"""Event ids of polled items are UUIDv5 in this namespace of `<poller name>/<item identity>`."""
ITEM_VARIABLES = ("item",)
"""What the event mapping (and `identity`) of a polled item sees."""
TRANSACTION_TIMEOUT_MS = 60_000
HEALTHY_AFTER_S = 60.0  # a session that ran this long starts its next restart backoff afresh


class PollFailedError(BusError):
    """A fetch failed in a way the next poll may not: no connection, a timeout, HTTP 5xx or
    429, ... The message says what and where (never a secret); `retry_after` is the server's
    wish, in seconds. The poller logs it and polls again after a backoff."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class PollerFencedError(BusError):
    """Another poller with the same name (the same transactional id) took over: this one can
    commit nothing more, and stops."""


@dataclass(frozen=True)
class Rejected:
    """Something a fetch read but could not turn into items (a response whose items are not a
    list, an item whose cursor value cannot be read): dead-lettered as it is."""

    payload: bytes
    step: str
    error: str
    error_type: str = "PollError"


@dataclass(frozen=True)
class Page:
    """One page of a fetch: its items (JSON values) and the cursor position to keep once they
    are published; `rejected` is dead-lettered in the same transaction."""

    items: Sequence[Any]
    position: Any
    rejected: Sequence[Rejected] = ()


Fetch = Callable[[Any], AsyncIterator[Page]]
"""Given the committed position (None at first), the pages to publish, in order. The poller
publishes (and commits) each page before it asks for the next one, and may stop asking at any
point; an async generator is closed with `aclose()`. Raise `PollFailedError` for a failure
that a later poll may not meet."""


class ItemError(BusError):
    """An item cannot become an event; `step` says which part failed (`event.map.email`,
    `event.key`, `event`, `identity`, ...)."""

    def __init__(self, step: str, message: str, error_type: str) -> None:
        self.step = step
        self.error_type = error_type
        super().__init__(message)


class ItemMapper:
    """An inbound item's `event` block over `item` (the shared `InboundMapping`): one polled
    item in, one validated event out. Without `map`, the item (a JSON object) is the data."""

    def __init__(self, event: InboundEvent, catalog: SchemaCatalog) -> None:
        """Raises ExpressionError for an expression that does not compile."""
        self.mapping = InboundMapping.compile(event, catalog, ITEM_VARIABLES, whole="item")

    def event(self, catalog: SchemaCatalog, item: Any, *, event_id: str, source: str) -> Event:
        """The item's event, or ItemError naming the first part that failed."""
        try:
            return self.mapping.event(
                catalog, {ITEM_VARIABLES[0]: item}, event_id=event_id, source=source
            )
        except MappingError as invalid:
            field = invalid.problems[0][0] if invalid.problems else ""
            if isinstance(invalid.__cause__, EventValidationError) or not field:
                step = "event"  # the event as a whole: its data does not fit the schema
            elif field.startswith("<"):
                step = f"event.{field.strip('<>')}"  # <key>, <subject>
            else:
                step = f"event.map.{field}"
            raise ItemError(step, str(invalid), type(invalid).__name__) from invalid

    def key_of(self, item: Any) -> str | None:
        """The item's Kafka key if it can be computed (for a dead letter), else None."""
        return self.mapping.key_of({ITEM_VARIABLES[0]: item})


def _evaluate(expression: Expression, values: Mapping[str, Any], step: str) -> Any:
    try:
        return expression.evaluate_in(values)
    except ExpressionError as error:
        raise ItemError(step, str(error), type(error).__name__) from error


_JSON_TYPES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),
    ((int, float), "a number"),
    (str, "text"),
    ((list, tuple), "a list"),
    (Mapping, "an object"),
)


def json_type(value: Any) -> str:
    """What kind of JSON value this is, for messages (never the value itself)."""
    if value is None:
        return "null"
    for types, name in _JSON_TYPES:
        if isinstance(value, types):
            return name
    return type(value).__name__


def canonical_json(value: Any) -> bytes:
    """The JSON of a value with sorted keys and no spaces: equal values, equal bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


@dataclass(frozen=True, slots=True)
class _Write:
    """A record a page writes, and the hop of the item it is for."""

    topic: str
    record: KafkaRecord
    scope: HopScope

    def landed(self, sent: RecordMetadata) -> None:
        """The page committed: the hop ends saying where its record landed (a dead letter is
        the hop's output, where journeys look for it)."""
        scope = self.scope
        hop = scope.hop
        if hop.outcome == "dead-lettered":
            hop.outputs.append(Output(hop.event_id, self.topic, sent.partition, sent.offset))
        else:
            hop.topic, hop.partition, hop.offset = self.topic, sent.partition, sent.offset
            hop.outcome = "accepted"
            scope.set("messaging.destination.partition.id", str(sent.partition))
            scope.set("messaging.kafka.offset", sent.offset)
        scope.end()


@dataclass
class _Outputs:
    """What one page writes, and what it counts once committed."""

    writes: list[_Write] = field(default_factory=list)
    published: int = 0
    dead_lettered: int = 0
    skipped: int = 0

    def failed(self, error: BaseException) -> None:
        """The page was not committed: its hops end as failed (a later poll redoes them)."""
        for write in self.writes:
            write.scope.end(error)


class Poller:
    """Polls with `fetch` every `every` seconds until stopped; see the module's docstring.

    Usage::

        poller = Poller(
            "tickets-poll", client.pages, ItemMapper(inbound.event, catalog),
            codec=EventCodec(catalog), bootstrap_servers="127.0.0.1:9092",
            topic="crm.customer-changed.v1", every=30.0, origin="https://helpdesk.example/api",
        )
        await poller.run(stop)            # until stop is set; PollerFencedError if replaced

    `before_commit` is awaited inside each transaction once all its records are acknowledged,
    just before the commit: a seam for fault-injection tests; leave it None otherwise.
    """

    def __init__(
        self,
        name: str,
        fetch: Fetch,
        mapper: ItemMapper,
        *,
        codec: EventCodec,
        bootstrap_servers: str,
        topic: str,
        every: float,
        dlq: str | None = None,
        origin: str = "",
        source: str | None = None,
        identity: Expression | None = None,
        store: CursorStore | None = None,
        remember: int = DEFAULT_REMEMBER,
        backoff: RetryPolicy | None = None,
        before_commit: Callable[[], Awaitable[None]] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        if every <= 0:
            raise ValueError(f"every must be positive, not {every}")
        self.name = name
        self.fetch = fetch
        self.mapper = mapper
        self.codec = codec
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.every = every
        self.dlq = dlq or default_dlq(name)
        self.origin = origin
        self.source = source or f"/inbound/{name}"
        self.identity = identity
        self.store = store or CursorStore(bootstrap_servers)
        self.remember = remember
        self.backoff = backoff or RetryPolicy(
            initial=every, max_delay=max(every, 300.0), multiplier=2.0, jitter=0.2
        )
        self._before_commit = before_commit
        self.telemetry = telemetry or Telemetry.disabled()
        self.status = self.telemetry.board.item(name, "poller")
        self.status.dead_letter_topic = self.dlq
        self.started = asyncio.Event()
        """Set once the producer has fenced any older poller of this name and the cursor is
        loaded; cleared when the poller stops."""
        self._committed = CursorState(seen=SeenItems(remember))
        """The last cursor committed (or loaded): each poll starts from it."""
        self.position: Any = None
        """The committed cursor position, as far as this poller knows."""
        self.published = 0
        self.dead_lettered = 0
        self.skipped = 0
        self.polls = 0
        self.failed_polls = 0

    @property
    def transactional_id(self) -> str:
        return f"bus.poll.{self.name}"

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set. Kafka failures restart the poller from its committed
        cursor after a backoff; `PollerFencedError` (another poller took over) is raised."""
        loop = asyncio.get_running_loop()
        restarts = 0
        try:
            while not stop.is_set():
                began = loop.time()
                try:
                    await self._session(stop)
                    return
                except PollerFencedError as fenced:
                    log.error(
                        "poller %s: another poller with the same name (transactional id %s) "
                        "took over; this one stops without committing its page in hand",
                        self.name,
                        self.transactional_id,
                    )
                    self.status.enter(ItemState.STOPPED, fenced)
                    raise
                except Exception as error:
                    restarts = 1 if loop.time() - began > HEALTHY_AFTER_S else restarts + 1
                    wait = self.backoff.delay(restarts)
                    self.status.enter(ItemState.RESTARTING, error)
                    log.exception(
                        "poller %s failed; restarting from its committed cursor in %.1f s",
                        self.name,
                        wait,
                    )
                await _sleep_unless(stop, wait)
        finally:
            self.status.enter(ItemState.STOPPED)

    async def _session(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        await self.store.ensure_topic()
        producer = kafka_clients.producer(
            bootstrap_servers=self.bootstrap_servers,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        try:
            # Starting fences any older producer with this transactional id and ends its open
            # transaction; only then is the cursor read, so no zombie can move it afterwards.
            await producer.start()
            state = await self.store.load(self.name, remember=self.remember)
            self._committed = state or CursorState(seen=SeenItems(self.remember))
            self.position = self._committed.position
            self.started.set()
            self.status.enter(ItemState.RUNNING)
            log.info(
                "poller %s: started at position %r, %d items remembered",
                self.name,
                self._committed.position,
                len(self._committed.seen),
            )
            failures = 0
            while not stop.is_set():
                tick = loop.time()
                try:
                    await self._poll(producer, stop)
                except PollFailedError as failed:
                    failures += 1
                    self.failed_polls += 1
                    wait = self.backoff.delay(failures, failed.retry_after)
                    self.status.enter(ItemState.RESTARTING, failed)
                    log.warning(
                        "poller %s: %s; polling again in %.1f s (%d failed polls in a row)",
                        self.name,
                        failed,
                        wait,
                        failures,
                    )
                else:
                    if failures:
                        self.status.enter(ItemState.RUNNING)
                        log.info(
                            "poller %s: polling works again after %d failed polls",
                            self.name,
                            failures,
                        )
                    failures = 0
                    wait = max(0.0, tick + self.every - loop.time())
                await _sleep_unless(stop, wait)
        finally:
            self.started.clear()
            await producer.stop()

    async def _poll(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        """One poll: every page the fetch gives, each published with its cursor. A failure
        after some pages leaves those committed: the next poll goes on from the last one."""
        self.polls += 1
        pages = self.fetch(self._committed.position)
        try:
            while (page := await _next_unless(pages, stop)) is not None:
                self._committed = await self._publish(producer, page, self._committed)
                self.position = self._committed.position
        finally:
            close = getattr(pages, "aclose", None)
            if close is not None:
                await close()

    async def _publish(
        self, producer: AIOKafkaProducer, page: Page, state: CursorState
    ) -> CursorState:
        seen = state.seen.copy()
        outputs = _Outputs()
        try:
            for item in page.items:
                await self._item(item, seen, outputs)
            for rejected in page.rejected:
                self._dead_letter_once(
                    rejected.payload,
                    rejected.step,
                    rejected.error_type,
                    rejected.error,
                    seen=seen,
                    outputs=outputs,
                )
            new_state = CursorState(position=page.position, seen=seen)
            if not outputs.writes and page.position == state.position:
                self.skipped += outputs.skipped
                return new_state  # nothing new: no transaction
            landed = await self._commit(producer, outputs.writes, new_state)
        except BaseException as error:
            outputs.failed(error)
            raise
        for write, sent in zip(outputs.writes, landed, strict=True):
            write.landed(sent)
        self.published += outputs.published
        self.dead_lettered += outputs.dead_lettered
        self.skipped += outputs.skipped
        return new_state

    async def _commit(
        self, producer: AIOKafkaProducer, writes: Sequence[_Write], state: CursorState
    ) -> list[RecordMetadata]:
        """Write `writes` and the cursor `state` in one transaction; where each write landed."""
        key, value = self.store.record(self.name, state)
        try:
            async with producer.transaction():
                sending = [
                    await producer.send(
                        write.topic,
                        write.record.value,
                        key=write.record.key,
                        headers=[*write.record.headers],
                    )
                    for write in writes
                ]
                sending.append(await producer.send(self.store.topic, value, key=key))
                landed: list[RecordMetadata] = await asyncio.gather(*sending)
                if self._before_commit is not None:
                    await self._before_commit()
        except ProducerFenced as fenced:
            raise PollerFencedError(
                f"poller {self.name}: fenced by a newer producer with transactional id "
                f"{self.transactional_id} (another poller of the same name started)"
            ) from fenced
        return landed[:-1]  # the last is the cursor's, no item's

    async def _item(self, item: Any, seen: SeenItems, outputs: _Outputs) -> None:
        content = canonical_json(item)
        try:
            identity = self._identity(item, content)
        except ItemError as error:
            self._dead_letter_once(
                content, error.step, error.error_type, str(error), seen=seen, outputs=outputs
            )
            return
        event_id = str(uuid.uuid5(POLL_NAMESPACE, f"{self.name}/{identity}"))
        digest = SeenItems.digest(event_id)
        if digest in seen:
            seen.add(digest)  # still there: forget it last
            outputs.skipped += 1
            return
        seen.add(digest)
        scope = self._hop(event_id)
        with scope.active():  # an error escaping ends the hop as failed
            try:
                event = self.mapper.event(
                    self.codec.catalog, item, event_id=event_id, source=self.source
                )
                scope.event(event)
                record = await self.codec.encode(event, scope.carrier())
            except ItemError as error:
                step, error_type, message = error.step, error.error_type, str(error)
            except EventValidationError as invalid:
                step, error_type, message = "output", type(invalid).__name__, str(invalid)
            else:
                outputs.writes.append(_Write(self.topic, record, scope))
                outputs.published += 1
                return
            key = self.mapper.key_of(item)
            self._dead_letter(scope, content, step, error_type, message, outputs=outputs, key=key)

    def _hop(self, event_id: str | None = None) -> HopScope:
        """The hop of one item the page writes; `event_id` is the event it is (or would be)."""
        scope = self.telemetry.producing("inbound", self.name, self.topic)
        scope.hop.event_id = scope.hop.root_id = event_id
        return scope

    def _identity(self, item: Any, content: bytes) -> str:
        if self.identity is None:
            return hashlib.sha256(content).hexdigest()
        value = _evaluate(self.identity, {ITEM_VARIABLES[0]: item}, "identity")
        if value is None or value == "":
            raise ItemError(
                "identity", f"expression {self.identity.source!r} gave no identity", "MappingError"
            )
        return value if isinstance(value, str) else canonical_json(value).decode()

    def _dead_letter_once(
        self,
        payload: bytes,
        step: str,
        error_type: str,
        error: str,
        *,
        seen: SeenItems,
        outputs: _Outputs,
    ) -> None:
        """Dead-letter what could not be read, unless the same was dead-lettered before (a
        bad response polled again must not fill the DLQ)."""
        content = hashlib.sha256(payload).hexdigest()
        digest = SeenItems.digest(f"{self.name}/rejected/{step}/{content}")
        if digest in seen:
            seen.add(digest)
            outputs.skipped += 1
            return
        seen.add(digest)
        with self._hop().active() as scope:
            self._dead_letter(scope, payload, step, error_type, error, outputs=outputs)

    def _dead_letter(
        self,
        scope: HopScope,
        payload: bytes,
        step: str,
        error_type: str,
        error: str,
        *,
        outputs: _Outputs,
        key: str | None = None,
    ) -> None:
        """Write `payload` to the DLQ as the hop of `scope`, which ends with the page."""
        log.warning("poller %s: dead-lettered at %s: %s", self.name, step, error)
        hop = scope.hop
        hop.outcome, hop.step, hop.error = "dead-lettered", step, f"{error_type}: {error}"
        # Nothing was consumed from Kafka: `topic` says where the payload came from (the
        # polled URL without its query), partition and offset are -1.
        letter = DeadLetter(
            error_type=error_type,
            error=error,
            flow=self.name,
            step=step,
            topic=self.origin,
            partition=-1,
            offset=-1,
            attempts=1,
            time=now(),
        )
        original = InputRecord(
            topic=self.origin,
            partition=-1,
            offset=-1,
            key=key.encode() if key is not None else None,
            value=payload,
            headers=[("content-type", b"application/json")],
        )
        outputs.writes.append(_Write(self.dlq, letter.to_record(original), scope))
        outputs.dead_lettered += 1


async def _next_unless(pages: AsyncIterator[Page], stop: asyncio.Event) -> Page | None:
    """The next page, or None when there is none or `stop` was set first (the fetch in hand is
    then cancelled: nothing of it was published)."""
    if stop.is_set():
        return None
    fetching = asyncio.ensure_future(anext(pages, None))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({fetching, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not fetching.done():
            fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetching
    return fetching.result() if not fetching.cancelled() else None


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    if seconds <= 0 or stop.is_set():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
