"""The demo from start to summary: Kafka, the demo systems and `bus run` started as children,
the load driven while the view shows it, then (at the end of the load or on Ctrl-C) a drain,
an orderly stop of everything started, and the accounts.

Order matters when stopping: the bus stops first (it finishes and commits what it holds, and
the systems it calls are still there), then the ledgers and the dead letters are read (all
written by then), then the systems and the broker stop.
"""

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiokafka.errors import KafkaError
from rich.console import Console

from bus.errors import BusError
from demo.accounting import DeadLettersAdded, Letter, Summary, account, outstanding
from demo.backlog import ItemTopics, item_topics, uncommitted
from demo.broker import KafkaInUse, existing_kafka, local_broker, local_kafka, stop_broker
from demo.children import (
    BUS_SHUTDOWN_GRACE,
    FLOW_FILES,
    SYSTEMS_READY,
    run_secrets,
    start_bus,
    start_systems,
)
from demo.errors import DemoError
from demo.letters import Offsets, dead_letter_ends, letters_since
from demo.load import LoadDriver
from demo.observe import Observer
from demo.ports import check_free
from demo.processes import HURRIED_GRACE, KILL_WAIT, Child
from demo.report import summary_lines
from demo.settings import DemoSettings
from demo.view import Links, View, make_view
from demo.watch import Watch, busy_items, dead_lettered

T = TypeVar("T")
WATCH_EVERY = 2.0  # seconds between two looks at the bus and the systems
DRAIN_POLL = 1.0
# After its own grace, `bus run` still closes its Kafka clients and HTTP servers and writes its
# last log line: the launcher waits that much longer before it sends SIGTERM.
BUS_STOP_MARGIN = 15.0
SYSTEMS_GRACE = 10.0
BROKER_GRACE = 30.0
# Once hurried, each child takes at most three steps of HURRIED_GRACE (first signal, SIGTERM,
# SIGKILL), and the broker one and its kill.
HURRIED_WITHIN = 2 * 3 * HURRIED_GRACE + HURRIED_GRACE + KILL_WAIT

EXIT_OK = 0
EXIT_FAILED = 1  # something was lost, a dead letter was not expected, or the demo failed
EXIT_NOT_VERIFIED = 3  # the drain did not finish: lost is not verified
EXIT_INTERRUPTED = 130  # stopped before the demo had started, or its children killed


@dataclass
class Started:
    """What this run started, so that it is all stopped whatever happens."""

    kafka: KafkaInUse | None = None
    systems: Child | None = None
    bus: Child | None = None
    pids: dict[str, int] = field(default_factory=dict)


class Signals:
    """Ctrl-C (or SIGTERM) once: stop the load, drain, stop everything in order. Twice: skip
    the drain and hurry every stop (`on_hurry`). Three times: kill the children (`on_kill`)."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self.killed = False
        self._received = 0
        self._on_hurry: Callable[[], None] = lambda: None
        self._on_kill: Callable[[], None] = lambda: None

    def install(self, on_hurry: Callable[[], None], on_kill: Callable[[], None]) -> None:
        self._on_hurry, self._on_kill = on_hurry, on_kill
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._got_one)

    def _got_one(self) -> None:
        self._received += 1
        if self._received == 1:
            self.stop.set()
        elif self._received == 2:
            self.hurry.set()
            self._on_hurry()
        else:
            self.killed = True
            self._on_kill()


class Launcher:
    def __init__(self, settings: DemoSettings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.signals = Signals()
        self.started = Started()
        self.run_id = secrets.token_hex(3)
        self.seed = settings.seed if settings.seed is not None else secrets.randbits(32)
        self.timings: dict[str, float] = {}
        self.view: View | None = None
        self.bus_stopping = False
        self.bus_exit: int | None = None
        self.bus_stopped: str | None = None

    def say(self, message: str) -> None:
        if self.view is not None:
            self.view.say(message)
        else:
            self.console.print(f"demo: {message}", soft_wrap=True, highlight=False)

    async def run(self) -> int:
        """The whole demo; the exit status (EXIT_*)."""
        self.signals.install(on_hurry=self._hurry, on_kill=self._kill)
        record: dict[str, Any] = {"run_id": self.run_id, "seed": self.seed}
        code = EXIT_FAILED  # unless it gets as far as a verdict
        try:
            summary = await self._run(record)
        except DemoError as error:
            record["error"] = str(error)
            code = EXIT_INTERRUPTED if self.signals.killed else EXIT_FAILED
        else:
            if summary is None:
                code = EXIT_INTERRUPTED
            else:
                for line in summary_lines(summary):
                    self.console.print(line, soft_wrap=True, highlight=False)
                code = exit_status(summary, self.bus_exit, hurried=self.signals.hurry.is_set())
        finally:
            self._write_record(record | {"exit_code": code})
        return code

    async def _run(self, record: dict[str, Any]) -> Summary | None:
        """Start, run, stop everything; the accounts (None: stopped before the demo started)."""
        began = time.monotonic()
        async with aiohttp.ClientSession() as session:
            observer = Observer(
                session,
                self.settings.admin_url,
                {
                    "crm": self.settings.crm_url,
                    "erp": self.settings.erp_url,
                    "gateway": self.settings.gateway_url,
                },
            )
            try:
                if not await self._unless_stopped(self._start(observer)):
                    self.say("stopped before the demo had started")
                    return None
                self.timings["startup_s"] = time.monotonic() - began
                self.say(f"everything is up after {self.timings['startup_s']:.1f} s")
                summary, details = await self._demo(session, observer)
                record |= details
                return summary
            except DemoError as error:
                self._stop_view()
                self.console.print(f"demo: {error}", soft_wrap=True, highlight=False)
                # Nothing left to account for: what is still running stops without waiting.
                self.signals.hurry.set()
                raise
            finally:
                self._stop_view()
                await self._stop_everything()

    def _stop_view(self) -> None:
        if self.view is not None:
            self.view.stop()
            self.view = None

    # -- start -------------------------------------------------------------------------------

    async def _unless_stopped(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` unless Ctrl-C comes first (then cancel it): whether it ran to its end."""
        task = asyncio.create_task(work)
        stopped = asyncio.create_task(self.signals.stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
        task.result()  # its error, if it failed
        return True

    async def _start(self, observer: Observer) -> None:
        settings = self.settings
        self.started.kafka = await self._kafka()
        bootstrap = self.started.kafka.bootstrap_servers
        self.say(f"Kafka: {self.started.kafka.description}")
        shared = run_secrets()
        # Both start at once: neither needs the other until the load begins.
        self.started.systems = start_systems(settings, shared, self.seed)
        self.started.pids["systems"] = self.started.systems.pid
        self.started.bus = start_bus(settings, shared, bootstrap)
        self.started.pids["bus"] = self.started.bus.pid
        self.say(
            f"started the demo systems (pid {self.started.systems.pid}) and bus run "
            f"(pid {self.started.bus.pid}); logs in {settings.log_dir}"
        )
        await asyncio.gather(
            self.started.systems.wait_for_line(SYSTEMS_READY, settings.startup_timeout),
            self._bus_ready(self.started.bus, observer),
        )

    async def _kafka(self) -> KafkaInUse:
        settings = self.settings
        if settings.kafka:
            check_free(settings.ports.listeners(with_broker=False))
            return await existing_kafka(settings.kafka)
        broker = local_broker(settings.bus, settings.ports.kafka, settings.ports.kafka_controller)
        running = broker.status().running
        check_free(settings.ports.listeners(with_broker=not running))
        kafka = await local_kafka(broker, self.say)
        if kafka.started is not None:
            status = kafka.started.status()
            if status.pid is not None:
                self.started.pids["broker"] = status.pid
        return kafka

    async def _bus_ready(self, bus: Child, observer: Observer) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        while not await observer.ready():
            if not bus.running():
                raise bus.failure(f"bus run exited with code {bus.process.returncode}")
            if time.monotonic() > deadline:
                raise bus.failure(
                    f"bus run was not ready ({self.settings.admin_url}/readyz) within "
                    f"{self.settings.startup_timeout:.0f} s"
                )
            await asyncio.sleep(0.25)

    # -- run, drain, account -------------------------------------------------------------------

    async def _demo(
        self, session: aiohttp.ClientSession, observer: Observer
    ) -> tuple[Summary, dict[str, Any]]:
        settings = self.settings
        kafka = self.started.kafka
        assert kafka is not None  # noqa: S101 -- _start set it
        try:
            items = item_topics(FLOW_FILES)
        except BusError as error:  # bus run read them; this is its environment, not ours
            raise DemoError(f"could not read the flow files: {error}") from error
        # Where the dead-letter topics end before the first input: what comes after is this run's.
        letters_from = await self._dead_letter_ends(kafka, items)
        driver = LoadDriver(
            session=session,
            run_id=self.run_id,
            crm_url=settings.crm_url,
            bus_url=settings.bus_url,
            bootstrap_servers=kafka.bootstrap_servers,
            rate=settings.rate,
            events=settings.events,
            rng=random.Random(self.seed),  # noqa: S311 -- test data, reproducible from a seed
        )
        prefix = (
            "" if kafka.default_local else f"KAFKA_BOOTSTRAP_SERVERS={kafka.bootstrap_servers} "
        )
        links = Links(
            admin=settings.admin_url,
            bus=settings.bus_url,
            logs=str(settings.log_dir),
            trace_prefix=f"{prefix}.venv/bin/bus trace",
        )
        self.view = make_view(settings.view, self.console, links)
        self.view.start()
        stop_hint = "Ctrl-C stops the load, drains and prints the summary"
        self.say(
            f"run {self.run_id} (seed {self.seed}): load of {settings.rate:g} inputs/s, "
            + (f"{settings.events} inputs" if settings.events else "until Ctrl-C")
        )
        watch = Watch(observer, driver, self.run_id)
        began = time.monotonic()
        await self._load(driver, watch, f"sending the load; {stop_hint}")
        self.timings["load_s"] = time.monotonic() - began
        self.say(f"load stopped after {driver.sent} inputs; draining")
        began = time.monotonic()
        drained = await self._drain(watch)
        self.timings["drain_s"] = time.monotonic() - began
        self.view.show(await watch.look("stopping bus run"))
        self._stop_view()
        began = time.monotonic()
        await self._stop_bus()
        self.timings["bus_stop_s"] = time.monotonic() - began
        if self.signals.killed:
            raise DemoError("every process this run started was killed (third Ctrl-C): no summary")
        # Everything the bus wrote is written now: the systems' records and the dead letters.
        ledgers = await _retrying(observer.ledgers)
        counted = dead_lettered(watch.current)  # the items' counters, as they last said
        letters = await self._letters(kafka, items, letters_from)
        dead = DeadLettersAdded(counted) if letters is None else DeadLettersAdded.read(letters)
        backlog = None if drained else await self._backlog(kafka, items)
        summary = account(
            self.run_id,
            ledgers,
            driver.inputs,
            dead,
            drained=drained,
            backlog=backlog,
            topics={item: topics.dlq for item, topics in items.items()},
        )
        details = {
            "summary": summary.as_json(),
            "ledgers": ledgers.as_json(),
            "inputs": [item.as_json() for item in driver.inputs],
            "dlq": {
                "from_offsets": None
                if letters_from is None
                else {f"{tp.topic}[{tp.partition}]": at for tp, at in letters_from.items()},
                "letters": None
                if letters is None
                else {item: [asdict(one) for one in found] for item, found in letters.items()},
                "counted_by_items": counted,
            },
            "kafka": {
                "bootstrap_servers": kafka.bootstrap_servers,
                "started_by_demo": kafka.started is not None,
            },
            "ports": asdict(settings.ports),
            "bus_exit": self.bus_exit,
            "bus_stopped": self.bus_stopped,
            "uncommitted": backlog,
        }
        return summary, details

    async def _load(self, driver: LoadDriver, watch: Watch, status: str) -> None:
        """The load, watched, until its end, Ctrl-C, or a child's death."""
        assert self.view is not None  # noqa: S101 -- the view runs while the load does
        load = asyncio.create_task(driver.run(self.signals.stop))
        hurry = asyncio.create_task(self.signals.hurry.wait())
        try:
            while not load.done():
                self._check_children()
                self.view.show(await watch.look(status))
                await asyncio.wait(
                    {load, hurry}, timeout=WATCH_EVERY, return_when=asyncio.FIRST_COMPLETED
                )
                if hurry.done():  # a second Ctrl-C: answers still awaited are not waited for
                    load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
        finally:
            hurry.cancel()
            load.cancel()  # done by now, unless a child died under way

    async def _drain(self, watch: Watch) -> bool:
        """Until every expected delivery is made or dead-lettered and every item is idle
        (twice in a row: lag comes from the last fetch), the timeout, or a second Ctrl-C:
        whether it drained."""
        deadline = time.monotonic() + self.settings.drain_timeout
        idle_looks = 0
        while not self.signals.hurry.is_set():
            left = deadline - time.monotonic()
            status = f"draining ({left:.0f} s left; Ctrl-C again skips the drain)"
            self._check_children()
            frame = await watch.look(status)
            assert self.view is not None  # noqa: S101 -- the view runs while draining
            self.view.show(frame)
            busy = busy_items(frame.current)
            waiting = outstanding(frame.progress) if frame.progress is not None else None
            idle_looks = idle_looks + 1 if waiting == 0 and busy == [] else 0
            if idle_looks >= 2:
                self.say("drained: every expected delivery is made or in a DLQ, nothing in flight")
                return True
            if left <= 0:
                self.say(
                    f"the drain timed out after {self.settings.drain_timeout:g} s "
                    f"({waiting} deliveries waiting; busy: {', '.join(busy or []) or '-'})"
                )
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.signals.hurry.wait(), DRAIN_POLL)
        self.say("drain skipped (second Ctrl-C)")
        return False

    async def _dead_letter_ends(
        self, kafka: KafkaInUse, items: dict[str, ItemTopics]
    ) -> Offsets | None:
        try:
            return await dead_letter_ends(kafka.bootstrap_servers, items)
        except (KafkaError, BusError, OSError) as error:
            self.say(f"could not read the dead-letter topics: {error!r}; they will only be counted")
            return None

    async def _letters(
        self, kafka: KafkaInUse, items: dict[str, ItemTopics], since: Offsets | None
    ) -> dict[str, list[Letter]] | None:
        """The letters this run added, per item; None when Kafka could not be read."""
        if since is None:
            return None
        try:
            return await letters_since(kafka.bootstrap_servers, items, since)
        except (KafkaError, BusError, OSError) as error:
            self.say(
                f"could not read this run's dead letters: {error!r}; counted by the items instead"
            )
            return None

    async def _backlog(self, kafka: KafkaInUse, items: dict[str, ItemTopics]) -> dict[str, int]:
        """Per item, what its consumer group left uncommitted: pending, not lost."""
        try:
            return await uncommitted(kafka.bootstrap_servers, items)
        except (KafkaError, BusError, OSError) as error:
            self.say(f"could not read the consumer groups' offsets: {error!r}; pending unknown")
            return {}

    def _write_record(self, record: dict[str, Any]) -> None:
        path = self.settings.summary_json
        if path is None:
            return
        record |= {"pids": self.started.pids, "timings": self.timings}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str))
        self.say(f"summary, ledgers and child pids written to {path}")

    # -- stop ----------------------------------------------------------------------------------

    async def _stop_bus(self) -> None:
        bus = self.started.bus
        if bus is None:
            return
        if bus.running():
            # Hurried, bus.stop sends the second signal (SIGTERM) after HURRIED_GRACE.
            within = HURRIED_GRACE if self.signals.hurry.is_set() else BUS_SHUTDOWN_GRACE
            self.say(f"stopping bus run (it has {within:g} s to finish and commit what it holds)")
            self.bus_stopping = True
            code = await bus.stop(
                signal.SIGINT, BUS_SHUTDOWN_GRACE + BUS_STOP_MARGIN, self.signals.hurry
            )
            self.bus_stopped = _stopped_line(bus)
            said = f": {self.bus_stopped}" if self.bus_stopped else f" (its log: {bus.log})"
            self.say(f"bus run exited with code {code}{said}")
        self.bus_exit = bus.process.returncode

    async def _stop_everything(self) -> None:
        """Stop whatever is still running, in order; one failing stop does not spare the rest."""
        kafka = self.started.kafka
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("bus run", self._stop_bus),
            ("the demo systems", self._stop_systems),
        ]
        if kafka is not None and kafka.started is not None:
            steps.append(("the local Kafka broker", lambda: self._stop_broker(kafka)))
        for what, stop in steps:
            try:
                await stop()
            except Exception as error:  # the next ones must still be stopped
                self.say(f"stopping {what} failed: {error!r}")

    async def _stop_systems(self) -> None:
        systems = self.started.systems
        if systems is not None and systems.running():
            code = await systems.stop(signal.SIGINT, SYSTEMS_GRACE, self.signals.hurry)
            self.say(f"demo systems exited with code {code}")

    async def _stop_broker(self, kafka: KafkaInUse) -> None:
        assert kafka.started is not None  # noqa: S101 -- only a broker this run started
        self.say("stopping the local Kafka broker this run started")
        within = HURRIED_GRACE if self.signals.hurry.is_set() else BROKER_GRACE
        pid = await stop_broker(kafka.started, within)
        if pid is None:
            self.say("the local Kafka broker had stopped already")
        else:
            self.say(f"stopped the local Kafka broker (pid {pid})")

    def _hurry(self) -> None:
        """A second Ctrl-C: no drain, and every stop short."""
        bus = self.started.bus
        if self.bus_stopping and bus is not None and bus.running():
            bus.signal_group(signal.SIGINT)  # bus run's second signal: it stops at once
        self.say(
            f"stopping now: no drain, and bus run stops within {HURRIED_GRACE:g} s (what it "
            "does not finish is not committed, so its next start delivers it again); "
            f"everything is stopped within {HURRIED_WITHIN:.0f} s at most. Ctrl-C again kills "
            "every process this run started"
        )

    def _kill(self) -> None:
        """A third Ctrl-C: every process this run started is killed at once."""
        self.say("killing every process this run started")
        for child in (self.started.bus, self.started.systems):
            if child is not None:
                child.signal_group(signal.SIGKILL)
        broker = self.started.pids.get("broker")
        if broker is not None:  # the broker leads its own process group too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(broker, signal.SIGKILL)

    def _check_children(self) -> None:
        """A child that died under way ends the demo, saying why."""
        for child in (self.started.systems, self.started.bus):
            if child is not None and not child.running():
                raise child.failure(
                    f"{child.name} exited unexpectedly with code {child.process.returncode}"
                )


def exit_status(summary: Summary, bus_exit: int | None, *, hurried: bool) -> int:
    """The demo's exit status, once it has its accounts (see EXIT_*)."""
    if summary.lost:
        return EXIT_FAILED
    # Hurried, bus run was told to stop at once, and says so with its status.
    if bus_exit != 0 and not hurried:
        return EXIT_FAILED
    if not summary.drained:
        return EXIT_NOT_VERIFIED
    return EXIT_OK if summary.letters_as_expected else EXIT_FAILED


def _stopped_line(bus: Child) -> str | None:
    """What `bus run` said last about stopping (its JSON log's message)."""
    with contextlib.suppress(FileNotFoundError):
        for line in reversed(bus.log.read_text(errors="replace").splitlines()):
            if '"stopped' not in line:
                continue
            with contextlib.suppress(ValueError):
                message = json.loads(line).get("message", "")
                if message.startswith("stopped"):
                    return str(message)
    return None


async def _retrying(read: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """A read of the systems, tried again a few times (one may be busy a moment)."""
    for attempt in range(attempts):
        try:
            return await read()
        except (aiohttp.ClientError, TimeoutError) as error:
            if attempt == attempts - 1:
                raise DemoError(f"could not read the demo's state: {error!r}") from error
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")
