"""The demo from start to summary: Kafka, the demo systems and `bus run` started as children,
the load driven while the view shows it, then (at the end of the load or on Ctrl-C) a drain,
an orderly stop of everything started, and the accounts.

Order matters when stopping: the bus stops first (it finishes and commits what it holds, and
the systems it calls are still there), then the ledgers are read, then the systems and the
broker stop.
"""

import asyncio
import contextlib
import json
import random
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
from aiokafka.errors import KafkaError
from rich.console import Console

from bus.admin.top_view import Sample
from bus.config import load_settings
from bus.errors import BusError
from demo.accounting import Summary, account, outstanding
from demo.backlog import sources_of, uncommitted
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
from demo.load import LoadDriver
from demo.observe import MAX_LETTERS, DlqCounts, Observer
from demo.ports import check_free
from demo.processes import Child
from demo.report import summary_lines
from demo.settings import DemoSettings
from demo.view import Links, View, make_view
from demo.watch import Watch, busy_items, dead_lettered

T = TypeVar("T")
WATCH_EVERY = 2.0  # seconds between two looks at the bus and the systems
DRAIN_POLL = 1.0
EXIT_INTERRUPTED = 130


@dataclass
class Started:
    """What this run started, so that it is all stopped whatever happens."""

    kafka: KafkaInUse | None = None
    systems: Child | None = None
    bus: Child | None = None
    pids: dict[str, int] = field(default_factory=dict)


class Signals:
    """Ctrl-C or SIGTERM once: stop the load, drain, stop. Twice: skip the drain."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._received)

    def _received(self) -> None:
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()


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
        self.bus_stopped: str | None = None

    def say(self, message: str) -> None:
        if self.view is not None:
            self.view.say(message)
        else:
            self.console.print(f"demo: {message}", soft_wrap=True, highlight=False)

    async def run(self) -> int:
        """The whole demo; the exit status: 0 when nothing was lost."""
        self.signals.install()
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
                    return EXIT_INTERRUPTED
                self.timings["startup_s"] = time.monotonic() - began
                self.say(f"everything is up after {self.timings['startup_s']:.1f} s")
                summary, record = await self._demo(session, observer)
            except DemoError as error:
                self.console.print(f"demo: {error}", soft_wrap=True, highlight=False)
                return 1
            finally:
                if self.view is not None:
                    self.view.stop()
                    self.view = None
                await self._stop_everything()
        for line in summary_lines(summary):
            self.console.print(line, soft_wrap=True, highlight=False)
        code = 0 if summary.lost == 0 else 1
        if self.settings.summary_json is not None:
            record |= {"pids": self.started.pids, "timings": self.timings, "exit_code": code}
            path = self.settings.summary_json
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2, default=str))
            self.say(f"summary, ledgers and child pids written to {path}")
        return code

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
        try:
            bus_settings = load_settings()
        except BusError as error:
            raise DemoError(str(error)) from error
        broker = local_broker(bus_settings, settings.ports.kafka, settings.ports.kafka_controller)
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
        dlq_before = await _retrying(observer.dlq)
        run_started = datetime.now().astimezone()
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
        load = asyncio.create_task(driver.run(self.signals.stop))
        hurry = asyncio.create_task(self.signals.hurry.wait())
        try:
            while not load.done():
                self._check_children()
                self.view.show(await watch.look(f"sending the load; {stop_hint}"))
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
        self.timings["load_s"] = time.monotonic() - began
        self.say(f"load stopped after {driver.sent} inputs; draining")
        began = time.monotonic()
        drained, last = await self._drain(watch)
        self.timings["drain_s"] = time.monotonic() - began
        flows = last
        dlq_after = await _retrying(observer.dlq)
        added = dlq_after.added_since(dlq_before)
        letters = await _letters(observer, dlq_after, added, run_started)
        self.view.show(await watch.look("stopping bus run"))
        self.view.stop()
        self.view = None
        began = time.monotonic()
        await self._stop_bus()
        ledgers = await _retrying(observer.ledgers)
        self.timings["bus_stop_s"] = time.monotonic() - began
        backlog = None if drained else await self._backlog()
        summary = account(
            self.run_id,
            ledgers,
            driver.inputs,
            added,
            drained=drained,
            backlog=backlog,
            letters=letters,
            topics=dlq_after.topics,
        )
        record = {
            "run_id": self.run_id,
            "seed": self.seed,
            "summary": summary.as_json(),
            "ledgers": ledgers.as_json(),
            "inputs": [item.as_json() for item in driver.inputs],
            "dlq": {
                "before": dlq_before.letters,
                "after": dlq_after.letters,
                "added": added,
                "counted_by_items": dead_lettered(flows),
                "topics": dlq_after.topics,
            },
            "kafka": {
                "bootstrap_servers": kafka.bootstrap_servers,
                "started_by_demo": kafka.started is not None,
            },
            "ports": asdict(settings.ports),
            "bus_stopped": self.bus_stopped,
            "uncommitted": backlog,
        }
        return summary, record

    async def _drain(self, watch: Watch) -> tuple[bool, Sample | None]:
        """Until every expected delivery is made or dead-lettered and every item is idle
        (twice in a row: lag comes from the last fetch), the timeout, or a second Ctrl-C."""
        deadline = time.monotonic() + self.settings.drain_timeout
        idle_looks = 0
        frame = None
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
                return True, frame.current
            if left <= 0:
                self.say(
                    f"the drain timed out after {self.settings.drain_timeout:g} s "
                    f"({waiting} deliveries waiting; busy: {', '.join(busy or []) or '-'})"
                )
                return False, frame.current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.signals.hurry.wait(), DRAIN_POLL)
        self.say("drain skipped (second Ctrl-C)")
        return False, frame.current if frame is not None else None

    async def _backlog(self) -> dict[str, int]:
        """Per item, what its consumer group left uncommitted: pending, not lost."""
        kafka = self.started.kafka
        assert kafka is not None  # noqa: S101 -- set by _start
        try:
            return await uncommitted(kafka.bootstrap_servers, sources_of(FLOW_FILES))
        except (KafkaError, OSError) as error:
            self.say(f"could not read the consumer groups' offsets: {error!r}; pending unknown")
            return {}

    # -- stop ----------------------------------------------------------------------------------

    async def _stop_bus(self) -> None:
        bus = self.started.bus
        if bus is None or not bus.running():
            return
        self.say("stopping bus run (it finishes and commits what it holds)")
        code = await bus.stop(signal.SIGINT, grace=BUS_SHUTDOWN_GRACE + 15)
        self.bus_stopped = _stopped_line(bus)
        said = f": {self.bus_stopped}" if self.bus_stopped else f" (its log: {bus.log})"
        self.say(f"bus run exited with code {code}{said}")

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
            code = await systems.stop(signal.SIGINT, grace=10)
            self.say(f"demo systems exited with code {code}")

    async def _stop_broker(self, kafka: KafkaInUse) -> None:
        assert kafka.started is not None  # noqa: S101 -- only a broker this run started
        self.say("stopping the local Kafka broker this run started")
        pid = await stop_broker(kafka.started)
        self.say(f"stopped the local Kafka broker (pid {pid})")

    def _check_children(self) -> None:
        """A child that died under way ends the demo, saying why."""
        for child in (self.started.systems, self.started.bus):
            if child is not None and not child.running():
                raise child.failure(
                    f"{child.name} exited unexpectedly with code {child.process.returncode}"
                )


async def _letters(
    observer: Observer, after: DlqCounts, added: dict[str, int], since: datetime
) -> dict[str, list[dict[str, Any]]] | None:
    """The reasons of the letters this run added (written since it started), per item; None
    when the admin API could not list them."""
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        for flow, count in added.items():
            if count <= 0 or after.letters[flow] > MAX_LETTERS:  # too many to read them all
                continue
            reasons = await observer.letters(flow, after.letters[flow])
            found[flow] = [r for r in reasons if datetime.fromisoformat(r["time"]) >= since]
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
        return None
    return found


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
    """A read of the admin API or the systems, tried again a few times (the admin API reads
    Kafka one request at a time, and may answer 503 busy)."""
    for attempt in range(attempts):
        try:
            return await read()
        except (aiohttp.ClientError, TimeoutError) as error:
            if attempt == attempts - 1:
                raise DemoError(f"could not read the demo's state: {error!r}") from error
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")
