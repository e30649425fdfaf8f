"""Event journeys: every hop of every process writes a small record to the journey topic, keyed
by the journey's root event id, so `bus trace` can show an event's whole tree from anywhere.

Recording is off the data path: `record()` only puts the encoded hop in a bounded buffer; a
background task hands the buffer to the producer, whose batches (linger_ms) go out without
anyone waiting for them. When Kafka is slow or away the buffer fills, and further records are
dropped and counted (`on_drop`) rather than slowing any flow down.
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from bus import kafka_clients
from bus.errors import ConfigError
from bus.flows.model import JourneySettings
from bus.kafka_clients import durable_producer
from bus.telemetry.hop import Hop
from bus.telemetry.journey_reader import read_journey
from bus.telemetry.journey_record import encode, journey_key, sampled
from bus.telemetry.journey_render import render_journey
from bus.telemetry.journey_tree import Journey, JourneyHop

__all__ = ["Journey", "JourneyHop", "JourneyRecorder", "read_journey", "render_journey"]

log = logging.getLogger(__name__)

PARTITIONS = 6
CAPACITY = 10_000  # records buffered while the producer cannot keep up (about 5 MB)
CONNECT_WITHIN = 5.0  # how long start() waits for Kafka before going on connecting behind
FLUSH_WITHIN = 5.0  # how long stop() may take to send what is buffered
CLOSE_WITHIN = 2.0  # then how long closing the producer may take
RECONNECT_S = (0.5, 30.0)  # first and longest wait between attempts to reach Kafka
LINGER_MS = 50


class JourneyRecorder:
    """Writes the journey record of every sampled hop to `settings.topic`."""

    def __init__(
        self,
        bootstrap_servers: str,
        settings: JourneySettings,
        *,
        on_drop: Callable[[], None] | None = None,
        capacity: int = CAPACITY,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.settings = settings
        self._on_drop = on_drop
        self._capacity = capacity
        self._buffer: deque[tuple[bytes, bytes]] = deque()
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failed_once = False

    @property
    def topic(self) -> str:
        return self.settings.topic

    async def start(self) -> None:
        """Create the topic if missing and start the producer. Waits at most CONNECT_WITHIN
        seconds: a Kafka that does not answer by then is tried again in the background, while
        records fill the buffer (and are dropped once it is full)."""
        self._task = asyncio.create_task(self._run(), name=f"journeys to {self.topic}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), CONNECT_WITHIN)
        if not self._connected.is_set():
            log.warning(
                "journey topic %s: Kafka at %s does not answer yet; recording into a buffer of "
                "%d records meanwhile, dropping the rest",
                self.topic,
                self.bootstrap_servers,
                self._capacity,
            )

    def record(self, hop: Hop) -> None:
        """Queue the hop's record, if its journey is sampled; never waits, never raises."""
        try:
            key = journey_key(hop)
            if key is None or not sampled(key, self.settings.sample_ratio):
                return
            if self._closing.is_set() or len(self._buffer) >= self._capacity:
                self._dropped()
                return
            self._buffer.append((key.encode(), encode(hop)))
            self._wake.set()
        except Exception:  # a journey record must never fail the hop it describes
            if not self._failed_once:
                self._failed_once = True
                log.exception("journey record of a %s hop of %s not written", hop.kind, hop.flow)
            self._dropped()

    async def stop(self) -> None:
        """Send what is buffered within FLUSH_WITHIN seconds, then close; whatever could not be
        sent by then is dropped (and counted)."""
        self._closing.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), FLUSH_WITHIN)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        while self._buffer:
            self._buffer.popleft()
            self._dropped()

    def _dropped(self) -> None:
        if self._on_drop is not None:
            with contextlib.suppress(Exception):  # a broken counter must not break the caller
                self._on_drop()

    async def _run(self) -> None:
        try:
            producer = await self._connect()
            if producer is not None:
                await self._drain(producer)
        except Exception:
            # A bug, not an outage (those are retried): say so once, and drop from now on.
            log.exception("journey recorder for %s stopped; no journey is recorded", self.topic)
            self._closing.set()

    async def _connect(self) -> AIOKafkaProducer | None:
        """A started producer, the topic existing; None if stop() came first."""
        wait = RECONNECT_S[0]
        while not self._closing.is_set():
            try:
                await self._ensure_topic()
                producer = durable_producer(self.bootstrap_servers, linger_ms=LINGER_MS)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._connected.set()
                log.info("recording journeys to %s", self.topic)
                return producer
            except (KafkaError, ConfigError) as error:
                log.warning(
                    "journey topic %s not reachable (%s); trying again in %g s",
                    self.topic,
                    error,
                    wait,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), wait)
            wait = min(wait * 2, RECONNECT_S[1])
        return None

    async def _drain(self, producer: AIOKafkaProducer) -> None:
        try:
            while True:
                while self._buffer:
                    key, value = self._buffer.popleft()
                    try:
                        sent = await producer.send(self.topic, value, key=key)
                    except KafkaError:  # the producer's own buffer stayed full: Kafka is away
                        self._dropped()
                        continue
                    sent.add_done_callback(self._delivered)
                if self._closing.is_set():
                    break
                self._wake.clear()
                await self._wake.wait()
            await producer.flush()
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(producer.stop(), CLOSE_WITHIN)

    def _delivered(self, sent: "asyncio.Future[object]") -> None:
        if sent.cancelled() or sent.exception() is not None:
            self._dropped()

    async def _ensure_topic(self) -> None:
        """Create the journey topic unless it exists: time-based retention, deleted (never
        compacted: every record of a key is a hop, not a newer version of one)."""
        admin = kafka_clients.admin_client(self.bootstrap_servers)
        try:
            await admin.start()
            if self.topic in set(await admin.list_topics()):
                return
            # As bus.flows.topics.ensure_topics: a replica per broker, up to 3.
            brokers = len((await admin.describe_cluster())["brokers"])
            replication = max(1, min(3, brokers))
            retention_ms = int(self.settings.retention.total_seconds() * 1000)
            configs = {"retention.ms": str(retention_ms), "cleanup.policy": "delete"}
            response = await admin.create_topics(
                [NewTopic(self.topic, PARTITIONS, replication, topic_configs=configs)]
            )
            for name, code, *rest in getattr(response, "topic_errors", []):
                if code and code != TopicAlreadyExistsError.errno:
                    raise ConfigError(
                        f"cannot create the journey topic {name!r} ({PARTITIONS} partitions, "
                        f"replication {replication}, retention.ms={retention_ms}): error {code} "
                        f"{rest[0] if rest else ''}; create it yourself, or set "
                        "observability.journeys.topic to one that exists"
                    )
            log.info("created the journey topic %s (retention.ms=%d)", self.topic, retention_ms)
        finally:
            await admin.close()
