"""The outbound delivery loop shared by every adapter: one consumer group member per item.

An adapter's `Delivery` makes one call for one event; everything around the call is here, once:

- **Consuming.** `getmany` is called all the time, also while nothing may be taken, so the
  member never looks dead to the group (max.poll.interval) however long an outage lasts.
  Backpressure is `pause`/`resume` of the assigned partitions: paused while the records in hand
  reach `plan.max_records_in_hand`, or while the circuit breaker is open.
- **Order.** Records of one key (of one partition) are called one after the other, retries
  included; other keys run concurrently, at most `plan.max_in_flight` calls at once
  (`bus.delivery.ordering`).
- **Retries** of transient failures follow `plan.retry`, honouring the server's Retry-After.
  With a **circuit breaker**, an event waits while the breaker is open (it is not failed), and
  a transient failure while it is open, or one that opens it, does not count toward the event's
  attempts: an outage is the endpoint's fault, not the event's, so an outage pauses the flow
  and dead-letters nothing, while an event that fails alone (the breaker stays closed because
  the others succeed) exhausts its attempts and is dead-lettered. The **rate limit** is awaited
  before every attempt.
- **Dead letters**: a permanent failure, exhausted retries, an undecodable record or a reply
  that cannot be made sends the original record to `plan.dead_letter_topic` with the same
  `bus_dlq_*` headers as a mediation flow's (so `bus dlq list|show|replay` work unchanged), and
  the key moves on.
- **Replies** (optional) are events made from the response and produced before the record
  counts as done (`bus.delivery.replies`).
- **Commits** are at-least-once: an offset is committed once its record and every earlier one
  of its partition are done (`bus.delivery.offsets`), every `COMMIT_INTERVAL_S`, when
  partitions are revoked, and at shutdown.
- **Revocation and shutdown** start no further record of the partitions concerned; records
  waiting (for a retry, the breaker, the rate limit or a call slot) are given up at once, and
  calls already on the wire are let finish (with their reply or dead letter): within
  `REVOKE_GRACE_S` on revocation, within the caller's grace on shutdown. Then what is done is
  committed. A record done ahead of an unfinished one of its partition is not covered by the
  commit and is delivered again by the next owner: at-least-once, never lost.

A failure that is not one record's fault (Kafka refusing a dead letter or a reply, a schema
registry that cannot be reached, an adapter that breaks its contract) fails `run`: the caller's
supervisor starts again from the last commit, and nothing is lost.

Each record is one `outbound` hop (`bus.telemetry.hub`) spanning its attempts, each attempt a
CLIENT span made current around the adapter's call (so the shared HTTP session's trace config
sends its `traceparent`; `hop.step` is "call" meanwhile, for log lines) and a sample of
`Telemetry.outbound_call`, taken after the circuit breaker heard the outcome. The hop's
`bus_end_to_end_latency_seconds` starts at its input event's `ce_time`: for an event a
mediation flow wrote, when that flow wrote it, not when the journey's first event was made.
Dead letters' error headers are redacted like the hop's error (`HopScope.redact`): an external
system's answer quoted there may echo a secret.
"""

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from opentelemetry.trace import SpanKind

from bus.delivery.contract import Delivery, Response
from bus.delivery.offsets import OffsetTracker, PartitionOffsets
from bus.delivery.ordering import Chain, KeyedChains
from bus.delivery.plan import DeliveryPlan, delivery_plan_from
from bus.delivery.replies import ReplyPlan, reply_event, reply_event_id, reply_plan_from
from bus.errors import (
    BusError,
    DeliveryError,
    EventValidationError,
    PermanentDeliveryError,
    SchemaRegistryError,
    TransientDeliveryError,
)
from bus.events.codec import DecodedEvent, EventCodec, KafkaRecord
from bus.flows.dead_letters import DeadLetter, InputRecord, previous_attempts
from bus.flows.dead_letters import now as utc_now
from bus.flows.expressions import ExpressionError
from bus.flows.processor import (
    DROPPED_HEADER,
    MAX_RECORD_BYTES,
    RecordTooLargeError,
    record_size,
)
from bus.kafka_clients import durable_producer, group_consumer
from bus.resilience.circuit_breaker import BreakerState
from bus.resilience.clock import SYSTEM_CLOCK, Clock
from bus.resilience.retry import RetriesExhaustedError
from bus.telemetry.hop import Output
from bus.telemetry.hop_scope import HopScope
from bus.telemetry.hub import Telemetry
from bus.telemetry.spans import StepSpan

__all__ = [
    "DeliveryPlan",
    "DeliveryRunner",
    "ReplyPlan",
    "delivery_plan_from",
    "describe",
    "reply_event_id",
    "reply_plan_from",
]

log = logging.getLogger(__name__)

POLL_MS = 100  # one getmany: also how soon a stop, a failure or a free slot is noticed
COMMIT_INTERVAL_S = 1.0
PAUSED_ENDS_S = 5.0  # while paused, how often the partitions' end offsets are asked (for the lag)
REVOKE_GRACE_S = 20.0  # calls under way get this long to finish when partitions are revoked
ABANDON_COMMIT_S = 5.0  # after a failure or cancellation: the last commit may take this long


@dataclass(frozen=True, slots=True)
class _Taken:
    """A record taken into work, and the offsets of its partition to report to when done."""

    record: InputRecord
    offsets: PartitionOffsets


@dataclass(frozen=True, slots=True)
class _Answered:
    response: Response


@dataclass(frozen=True, slots=True)
class _Refused:
    error: PermanentDeliveryError


@dataclass(frozen=True, slots=True)
class _Failed:
    error: TransientDeliveryError
    counts: bool  # toward the event's attempts: not when it was the endpoint's outage


_Outcome = _Answered | _Refused | _Failed


@dataclass(frozen=True, slots=True)
class _Delivered:
    response: Response
    attempts: int


@dataclass(frozen=True, slots=True)
class _Undeliverable:
    error: Exception
    attempts: int


class DeliveryRunner:
    """Delivers the events of `plan.sources` through `delivery` until told to stop.

    Usage (the caller owns `delivery` and closes it)::

        runner = DeliveryRunner(plan, delivery, codec, bootstrap_servers, reply=reply_plan)
        await runner.run(stop)          # until stop is set; finishes the calls under way

    `delivered`, `dead_lettered` and `replied` count what this runner did. A runner runs once;
    after a failure the supervisor starts a new one with the same plan (whose breaker and rate
    limiter thus carry over).
    """

    def __init__(
        self,
        plan: DeliveryPlan,
        delivery: Delivery,
        codec: EventCodec,
        bootstrap_servers: str,
        *,
        reply: ReplyPlan | None = None,
        clock: Clock = SYSTEM_CLOCK,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.plan = plan
        self.delivery = delivery
        self.codec = codec
        self.bootstrap_servers = bootstrap_servers
        self.reply = reply
        self.clock = clock
        self.telemetry = telemetry or Telemetry.disabled()
        self.delivered = 0
        self.dead_lettered = 0
        self.replied = 0
        self._offsets = OffsetTracker()
        self._chains: KeyedChains[_Taken] = KeyedChains(self._work)
        self._slots = asyncio.Semaphore(plan.max_in_flight)
        self._producer: AIOKafkaProducer | None = None
        self._paused = False
        self._stop = asyncio.Event()  # the caller's, once `run` has it
        self._status = self.telemetry.board.item(plan.name, "outbound")

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; then let the calls under way finish (start no others),
        commit what is done and leave the group. If the caller cancels this (its grace is
        over), the calls still under way are abandoned, and what is done is still committed."""
        self._stop = stop
        status = self._status
        status.breaker = self.plan.breaker
        status.dead_letter_topic = self.plan.dead_letter_topic
        status.in_flight = lambda: self._offsets.in_progress
        consumer = group_consumer(self.bootstrap_servers, self.plan.group_id)
        consumer.subscribe(list(self.plan.sources), listener=_HandOver(self, consumer))
        producer = durable_producer(self.bootstrap_servers)
        await producer.start()
        self._producer = producer
        try:
            try:
                await consumer.start()
                status.consumer = consumer
                await self._consume(consumer, stop)
                await self._chains.stop(self._offsets.partitions, grace=None)
                self._raise_if_failed()
                await self._commit(consumer)
            except BaseException:
                await self._abandon(consumer)
                raise
            finally:
                status.consumer = None
                await consumer.stop()
        finally:
            self._producer = None
            await producer.stop()

    # -- consuming --------------------------------------------------------------------------

    async def _consume(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_commit = loop.time() + COMMIT_INTERVAL_S
        next_ends = loop.time()
        while not stop.is_set():
            self._raise_if_failed()
            self._steer(consumer)
            if not self._paused:
                self._status.paused_ends.clear()
            elif loop.time() >= next_ends:
                await self._ask_ends(consumer)
                next_ends = loop.time() + PAUSED_ENDS_S
            room = max(1, self.plan.max_records_in_hand - self._offsets.in_progress)
            batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=room)
            for records in batch.values():
                for record in records:
                    self._take(record)
            if loop.time() >= next_commit:
                try:
                    await self._commit(consumer)
                except CommitFailedError as error:  # a rebalance: the hand-over commits
                    log.info("outbound %s: commit skipped: %s", self.plan.name, error)
                next_commit = loop.time() + COMMIT_INTERVAL_S

    async def _ask_ends(self, consumer: AIOKafkaConsumer) -> None:
        """The end offsets of the paused partitions, for the lag the status board shows; a
        broker that does not answer leaves the last ones (the lag is only for watching)."""
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(list(consumer.assignment())), 5)
        except (KafkaError, TimeoutError) as error:
            log.debug("outbound %s: end offsets not known: %s", self.plan.name, error)
            return
        self._status.paused_ends.update(ends)

    def _steer(self, consumer: AIOKafkaConsumer) -> None:
        """Pause fetching while the hands are full or the endpoint is down; resume after."""
        breaker = self.plan.breaker
        down = breaker is not None and breaker.state is BreakerState.OPEN
        full = self._offsets.in_progress >= self.plan.max_records_in_hand
        assigned = consumer.assignment()
        if down or full:
            consumer.pause(*assigned)
        else:
            consumer.resume(*assigned)
        if (down or full) != self._paused:
            self._paused = down or full
            why = "circuit open" if down else "max records in hand"
            log.debug(
                "outbound %s: consumption %s",
                self.plan.name,
                f"paused ({why})" if down or full else "resumed",
            )

    def _take(self, consumed: Any) -> None:
        partition = TopicPartition(consumed.topic, consumed.partition)
        if not self._chains.accepts(partition):
            return  # being handed over (or failed): whoever reads it next delivers it
        offsets = self._offsets.take(partition, consumed.offset)
        record = InputRecord(
            topic=consumed.topic,
            partition=consumed.partition,
            offset=consumed.offset,
            key=consumed.key,
            value=consumed.value or b"",
            headers=list(consumed.headers),
        )
        self._chains.submit(partition, consumed.key, _Taken(record, offsets))

    def _raise_if_failed(self) -> None:
        if self._chains.failure is not None:
            raise self._chains.failure

    # -- committing and handing over --------------------------------------------------------

    async def _commit(
        self, consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition] | None = None
    ) -> None:
        offsets = self._offsets.to_commit(partitions)
        if not offsets:
            return
        assigned = consumer.assignment()  # committing another member's partition is refused
        offsets = {
            partition: offset for partition, offset in offsets.items() if partition in assigned
        }
        if offsets:
            await consumer.commit(offsets)
            self._offsets.committed(offsets)

    async def _hand_over(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]) -> None:
        """Partitions are being revoked: start nothing more of them, give their calls under way
        `REVOKE_GRACE_S` to finish, commit what is done, and forget the rest (which the next
        owner delivers again)."""
        mine = partitions & self._offsets.partitions
        if not mine:
            return
        try:
            await self._chains.stop(mine, grace=REVOKE_GRACE_S)
            try:
                await self._commit(consumer, mine)
            except (CommitFailedError, IllegalStateError) as error:
                log.warning("outbound %s: commit on revocation failed: %s", self.plan.name, error)
        finally:
            self._offsets.forget(mine)
            if self._chains.failure is None:
                self._chains.reopen(mine)

    async def _abandon(self, consumer: AIOKafkaConsumer) -> None:
        """After a failure or a cancellation: stop everything, and commit what is done if
        Kafka lets us quickly (whatever is not committed is delivered again)."""
        await self._chains.abort()
        try:
            async with asyncio.timeout(ABANDON_COMMIT_S):
                await self._commit(consumer)
        except (KafkaError, TimeoutError) as error:
            log.warning("outbound %s: last commit failed: %r", self.plan.name, error)

    # -- one record -------------------------------------------------------------------------

    async def _work(self, taken: _Taken, chain: Chain[_Taken]) -> None:
        """Deliver one record, or dead-letter it; mark it done unless it was given up."""
        record = taken.record
        with self.telemetry.consumed(
            "outbound", self.plan.name, record, group=self.plan.group_id
        ) as scope:
            before = previous_attempts(record.headers)
            try:
                decoded = await self.codec.decode(record.key, record.value, record.headers)
            except BusError as error:
                scope.event_from_headers(record.headers)
                _raise_if_unavailable(error)
                chain.busy = True
                await self._dead_letter(scope, record, "decode", error, before + 1)
                taken.offsets.done(record.offset)
                return
            scope.event(decoded.event)
            outcome = await self._deliver(decoded, chain, scope)
            if outcome is None:  # the partition is being given up (or the runner stopped)
                scope.hop.outcome = "failed"
                scope.hop.error = "handed over undelivered: the partition's next owner delivers it"
                return
            if isinstance(outcome, _Undeliverable):
                await self._dead_letter(
                    scope, record, "call", outcome.error, before + outcome.attempts
                )
            else:
                scope.hop.outcome = "delivered"
                if self.reply is not None:
                    await self._send_reply(scope, record, decoded, outcome, before)
            taken.offsets.done(record.offset)
            if isinstance(outcome, _Delivered):
                self.delivered += 1

    async def _deliver(
        self, decoded: DecodedEvent, chain: Chain[_Taken], scope: HopScope
    ) -> _Delivered | _Undeliverable | None:
        """Call until it succeeds, fails for good, or the attempts that count run out. None:
        the partition is being given up, and the event was not delivered."""
        policy = self.plan.retry
        attempts = 0  # that count: not those failed in an outage
        calls = 0  # made: the hop's attempts
        while True:
            outcome = await self._attempt(decoded, chain, scope)
            if outcome is None:  # told to stop before the call went out
                return None
            calls += 1
            scope.hop.attempts = calls
            if isinstance(outcome, _Answered):
                return _Delivered(outcome.response, attempts + 1)
            if isinstance(outcome, _Refused):
                return _Undeliverable(outcome.error, attempts + 1)
            attempts += outcome.counts
            log.debug(
                "outbound %s: event %s failed (%s); %s",
                self.plan.name, decoded.event.id, describe(outcome.error),
                f"attempt {attempts} of {policy.attempts}" if outcome.counts else "outage",
            )  # fmt: skip
            if chain.stopping:
                return None
            if attempts >= policy.attempts:
                return _Undeliverable(RetriesExhaustedError(attempts, outcome.error), attempts)
            chain.busy = False
            if outcome.counts:
                await self.clock.sleep(policy.delay(attempts, outcome.error.retry_after))
            # else the breaker is open, and waiting for its trial is the backoff

    async def _attempt(
        self, decoded: DecodedEvent, chain: Chain[_Taken], scope: HopScope
    ) -> _Outcome | None:
        """One call, once the breaker, a free call slot and the rate limit let it go; None if
        the runner was told to stop meanwhile: no call goes out after a stop (the consuming
        loop, which stops the chains, notices it only at its next poll, up to `POLL_MS` later,
        and a chain whose slot freed meanwhile would otherwise call again)."""
        breaker, limiter = self.plan.breaker, self.plan.limiter
        while True:
            if breaker is not None:
                await breaker.wait_until_trial()  # the event waits out the outage
            async with self._slots:
                if limiter is not None:
                    await limiter.acquire()
                if self._stop.is_set():
                    # The rest of the chain waits for the next run too: going on would only
                    # hop them as handed over, and could dead-letter a later record of this
                    # key ahead of this one.
                    chain.stopping = True
                    return None
                # Nothing awaited between asking the breaker and calling: a call never goes out
                # after the breaker opened.
                if breaker is None or breaker.allow():
                    chain.busy = True
                    return await self._call(decoded, scope)

    async def _call(self, decoded: DecodedEvent, scope: HopScope) -> _Outcome:
        """The adapter's call, and what its outcome says of the endpoint's health. The
        breaker hears it first: nothing after may keep a half-open trial from being decided."""
        breaker = self.plan.breaker
        started = time.perf_counter()
        with scope.span(f"call {self.plan.name}", SpanKind.CLIENT, step="call") as span:
            try:
                response = await self._timed_call(decoded)
            except TransientDeliveryError as error:
                counts = True
                if breaker is not None:
                    breaker.record_failure()
                    # Open now: either it was open (this call went out before) or this failure
                    # opened it. Either way the endpoint is down, no fault of this event.
                    counts = breaker.state is not BreakerState.OPEN
                self._called(scope, span, error.status, started, error)
                return _Failed(error, counts=counts)
            except PermanentDeliveryError as error:
                if breaker is not None:
                    # An answer that refuses this event shows the endpoint up; an error without
                    # a status was raised before anything was sent and says nothing of its
                    # health.
                    if error.status is None:
                        breaker.record_abandoned()
                    else:
                        breaker.record_success()
                self._called(scope, span, error.status, started, error)
                return _Refused(error)
            except BaseException:
                if breaker is not None:
                    breaker.record_abandoned()  # cancelled, or an adapter that broke its contract
                raise
            if breaker is not None:
                breaker.record_success()
            self._called(scope, span, response.status, started)
        return _Answered(response)

    def _called(
        self,
        scope: HopScope,
        span: StepSpan,
        status: int | None,
        started: float,
        error: DeliveryError | None = None,
    ) -> None:
        """One call's answer, in the hop, its span (which redacts the error) and the metrics."""
        scope.hop.status = status
        if status is not None:
            span.set("http.response.status_code", status)
        if error is not None:
            span.set("error.type", type(error).__name__)
            span.fail(describe(error))
        self.telemetry.outbound_call(self.plan.name, status, time.perf_counter() - started)

    async def _timed_call(self, decoded: DecodedEvent) -> Response:
        limit = self.plan.call_timeout
        if limit is None:
            return await self.delivery.call(decoded)
        try:
            async with asyncio.timeout(limit):
                return await self.delivery.call(decoded)
        except TimeoutError as error:
            raise TransientDeliveryError(f"no answer within {limit:g} s") from error

    # -- what a record produces -------------------------------------------------------------

    async def _send_reply(
        self,
        scope: HopScope,
        record: InputRecord,
        decoded: DecodedEvent,
        delivered: _Delivered,
        before: int,
    ) -> None:
        assert self.reply is not None  # noqa: S101 -- only called with a reply plan
        try:
            event = reply_event(
                self.reply,
                self.codec.catalog,
                flow=self.plan.name,
                source=self.plan.source,
                request=decoded,
                response=delivered.response,
            )
            reply = await self.codec.encode(event, scope.carrier(decoded.trace))
            if record_size(reply) > MAX_RECORD_BYTES:
                raise RecordTooLargeError(
                    f"the reply would be {record_size(reply)} bytes, over the "
                    f"{MAX_RECORD_BYTES}-byte limit of a Kafka record"
                )
        except (ExpressionError, EventValidationError, RecordTooLargeError) as error:
            await self._dead_letter(
                scope,
                record,
                "reply",
                error,
                before + delivered.attempts,
                preface=(
                    f"the call was made (HTTP {delivered.response.status}) but its reply "
                    "could not be made; replaying this record calls again: "
                ),
            )
            return
        scope.hop.outputs.append(await self._produce(self.reply.topic, reply, event.id))
        self.replied += 1

    async def _dead_letter(
        self,
        scope: HopScope,
        record: InputRecord,
        step: str,
        error: Exception,
        attempts: int,
        *,
        preface: str = "",
    ) -> None:
        letter = DeadLetter(
            error_type=type(error).__name__,
            error=scope.redact(preface + describe(error)),
            flow=self.plan.name,
            step=step,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            attempts=attempts,
            time=utc_now(),
        )
        dead = letter.to_record(record)
        if record_size(dead) > MAX_RECORD_BYTES:
            # Its value is what made it too large; the headers still say where it came from.
            dropped = (DROPPED_HEADER, str(len(dead.value)).encode())
            dead = replace(dead, value=b"", headers=[*dead.headers, dropped])
        hop = scope.hop
        hop.outputs.append(await self._produce(self.plan.dead_letter_topic, dead, hop.event_id))
        hop.outcome = "dead-lettered"
        hop.step = step
        hop.error = f"{letter.error_type}: {letter.error}"
        self.dead_lettered += 1
        log.warning(
            "outbound %s: %s[%d]@%d dead-lettered at %s: %s: %s",
            self.plan.name, record.topic, record.partition, record.offset,
            step, letter.error_type, letter.error,
        )  # fmt: skip

    async def _produce(self, topic: str, record: KafkaRecord, event_id: str | None) -> Output:
        """Send and wait for acks=all; a KafkaError here fails the run (not the record). Says
        where the record landed."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("the delivery runner is not running")
        sent = await producer.send_and_wait(
            topic, record.value, key=record.key, headers=list(record.headers)
        )
        return Output(event_id, topic, sent.partition, sent.offset)


def describe(error: BaseException) -> str:
    """An error as a dead letter states it: with the response's status and the start of its
    body when there was a response (`... (HTTP 400: {"error": "amount"})`)."""
    if isinstance(error, RetriesExhaustedError) and isinstance(error.last_error, DeliveryError):
        return f"{error}{_http(error.last_error)}"
    if isinstance(error, DeliveryError):
        return f"{error}{_http(error)}"
    return str(error)


def _http(error: DeliveryError) -> str:
    if error.status is None:
        return ""
    excerpt = " ".join(error.excerpt.split())
    if not excerpt or excerpt in " ".join(error.reason.split()):  # said once is enough
        return f" (HTTP {error.status})"
    return f" (HTTP {error.status}: {error.excerpt})"


def _raise_if_unavailable(error: BaseException) -> None:
    """A schema registry outage is no fault of the record: fail the run, to be redone after a
    restart, rather than dead-letter a whole stream (as a mediation flow does)."""
    if isinstance(error, SchemaRegistryError) or isinstance(error.__cause__, SchemaRegistryError):
        raise error


class _HandOver(ConsumerRebalanceListener):  # type: ignore[misc]
    """Revocation finishes (briefly) and commits the partitions' work before they move."""

    def __init__(self, runner: DeliveryRunner, consumer: AIOKafkaConsumer) -> None:
        self._runner = runner
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._runner._hand_over(self._consumer, set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info(
            "outbound %s: assigned %s",
            self._runner.plan.name,
            ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)) or "nothing",
        )
