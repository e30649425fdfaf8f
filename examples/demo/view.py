"""What the person at the terminal sees while the demo runs: a live board (rich) on a terminal,
a progress line every few seconds otherwise, or nothing."""

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bus.admin.top_view import BREAKER_STYLE, STATE_STYLE, Sample, rate
from demo.accounting import Summary
from demo.observe import Ledgers
from demo.settings import ViewMode

PLAIN_EVERY = 5.0  # seconds between two progress lines
_KINDS = {"inbound": "in", "mediation": "flow", "outbound": "out", "lookup": "lookup"}
_SYSTEMS = {"crm": "CRM", "erp": "ERP", "gateway": "gateway", "kafka": "-"}
_TEXT_COLUMNS = {"bus item", "kind", "state", "delivery (systems' records)", "to"}


@dataclass(frozen=True)
class Links:
    """Where to look while it runs, shown at the top of the board."""

    admin: str
    bus: str
    logs: str
    trace_prefix: str  # e.g. "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/bus trace"


@dataclass
class Frame:
    """One look at the run."""

    elapsed: float
    status: str  # what the launcher is doing, and how to stop it
    sent: int
    rate: float
    current: Sample | None = None
    previous: Sample | None = None
    ledgers: Ledgers | None = None
    progress: Summary | None = None  # the accounts so far (dead letters from item counters)
    sample_event: str | None = None
    problems: list[str] = field(default_factory=list)  # reads that failed this time


class View(Protocol):
    def start(self) -> None: ...
    def show(self, frame: Frame) -> None: ...
    def say(self, message: str) -> None: ...
    def stop(self) -> None: ...


def make_view(mode: ViewMode, console: Console, links: Links) -> View:
    if mode == "auto":
        mode = "live" if sys.stdout.isatty() else "plain"
    if mode == "live":
        return LiveView(console, links)
    if mode == "plain":
        return PlainView(console, links)
    return QuietView(console)


class QuietView:
    """--view none: only what the launcher says, and the summary."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def start(self) -> None:
        pass

    def show(self, frame: Frame) -> None:
        pass

    def say(self, message: str) -> None:
        self.console.print(f"demo: {message}", soft_wrap=True)

    def stop(self) -> None:
        pass


class PlainView(QuietView):
    """A log-friendly progress line every few seconds."""

    def __init__(self, console: Console, links: Links) -> None:
        super().__init__(console)
        self.links = links
        self._last = 0.0
        self._traced: str | None = None

    def start(self) -> None:
        for line in _link_lines(self.links, None):
            self.say(line)

    def show(self, frame: Frame) -> None:
        now = time.monotonic()
        if now - self._last < PLAIN_EVERY:
            return
        self._last = now
        if frame.sample_event and self._traced is None:
            self._traced = frame.sample_event
            self.say(f"trace a sample event: {self.links.trace_prefix} {frame.sample_event}")
        self.console.print(_progress_line(frame), soft_wrap=True, highlight=False)


class LiveView(QuietView):
    """The board, redrawn in place at every frame."""

    def __init__(self, console: Console, links: Links) -> None:
        super().__init__(console)
        self.links = links
        self._live = Live(console=console, auto_refresh=False, transient=False)

    def start(self) -> None:
        self._live.start()

    def show(self, frame: Frame) -> None:
        self._live.update(self._board(frame), refresh=True)

    def say(self, message: str) -> None:
        self._live.console.print(f"demo: {message}", soft_wrap=True)

    def stop(self) -> None:
        self._live.stop()

    def _board(self, frame: Frame) -> Group:
        # Most important first: a short terminal cuts the bottom off.
        parts: list[Any] = [
            Text(_headline(frame), style="bold"),
            Text(frame.status, style="bold cyan"),
            *(Text(line, overflow="fold") for line in _link_lines(self.links, frame.sample_event)),
            *(Text(problem, style="yellow") for problem in frame.problems),
        ]
        if frame.current is not None:
            parts.append(_items_table(frame.current, frame.previous))
        if frame.progress is not None:
            parts.append(_deliveries_table(frame.progress))
        if frame.ledgers is not None:
            parts.append(Text(_systems_line(frame.ledgers), style="dim"))
        return Group(*parts)


def _headline(frame: Frame) -> str:
    minutes, seconds = divmod(int(frame.elapsed), 60)
    line = f"bus demo · {minutes}m{seconds:02d}s · sent {frame.sent} inputs ({frame.rate:.1f}/s)"
    if frame.progress is not None:
        accepted = sum(frame.progress.events_in.values())
        refused = sum(frame.progress.refused.values())
        line += f" · {accepted} accepted by the bus · {refused} refused at the door"
    return line


def _table(*headers: str) -> Table:
    """Compact: no outer frame, two spaces between columns: 12 columns fit 100 characters."""
    table = Table(
        box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False, show_edge=False
    )
    for header in headers:
        table.add_column(header, justify="left" if header in _TEXT_COLUMNS else "right")
    return table


def _items_table(current: Sample, previous: Sample | None) -> Table:
    table = _table(
        "bus item", "kind", "in/s", "out/s", "in", "out", "retried", "failed", "DLQ", "lag",
        "in-flight", "state",
    )  # fmt: skip
    table.columns[0].no_wrap = table.columns[-1].no_wrap = True
    before = previous.items() if previous is not None else {}
    elapsed = current.at - previous.at if previous is not None else 0.0
    for name, item in current.items().items():
        counters = item["counters"]
        earlier = before.get(name, {}).get("counters")
        table.add_row(
            name,
            _KINDS.get(item["kind"], item["kind"]),
            rate(counters, earlier, "in", elapsed),
            rate(counters, earlier, "out", elapsed),
            str(counters["in"]),
            str(counters["out"]),
            str(counters["retried"]),
            str(counters["failed"]),
            str(counters["dead_lettered"]),
            "-" if item["assigned_partitions"] is None else str(item["lag"]),
            "-" if item["in_flight"] is None else str(item["in_flight"]),
            _state(item["state"], item["breaker"]),
        )
    return table


def _state(state: str, breaker: str | None) -> Text:
    """The item's state; while it runs, its circuit breaker's when that is not closed."""
    if state != "running":
        return Text(state, style=STATE_STYLE.get(state, ""))
    if breaker in (None, "closed"):
        return Text("ok", style="green")
    return Text(f"breaker {breaker}", style=BREAKER_STYLE.get(breaker or "", ""))


def _deliveries_table(progress: Summary) -> Table:
    table = _table(
        "delivery (systems' records)", "to", "delivered", "DLQ", "duplicates", "deduplicated",
        "waiting",
    )  # fmt: skip
    table.columns[0].no_wrap = True
    for stream in progress.streams:
        table.add_row(
            stream.name,
            _SYSTEMS.get(stream.system, stream.system),
            f"{stream.delivered} of {stream.expected}",
            f"{stream.dead_lettered} of {stream.expected_dead}",
            str(stream.duplicates),
            str(stream.deduplicated),
            str(stream.outstanding),
        )
    return table


def _systems_line(ledgers: Ledgers) -> str:
    crm, erp, gateway = ledgers.crm, ledgers.erp, ledgers.gateway
    injected = gateway.get("injected", {})
    return (
        f"CRM: {crm.get('webhook_attempts', 0)} webhook calls, "
        f"{crm.get('webhook_retries', 0)} retried · "
        f"ERP: {erp.get('lookups', 0)} lookups, {erp.get('injected_faults', 0)} injected faults · "
        f"gateway: {gateway.get('tokens_issued', 0)} tokens, injected "
        + ", ".join(f"{n} {kind}" for kind, n in injected.items())
    )


def _link_lines(links: Links, sample_event: str | None) -> list[str]:
    lines = [
        f"admin {links.admin}/healthz /readyz /flows /dlq · metrics {links.admin}/metrics",
        f"OpenAPI {links.bus}/openapi.json · logs {links.logs}",
    ]
    if sample_event:
        lines.append(f"trace a sample event: {links.trace_prefix} {sample_event}")
    return lines


def _progress_line(frame: Frame) -> str:
    minutes, seconds = divmod(int(frame.elapsed), 60)
    parts = [f"[{minutes:3d}:{seconds:02d}] sent {frame.sent} ({frame.rate:.1f}/s)"]
    if frame.progress is not None:
        progress = frame.progress
        delivered = progress.delivered_by_system()
        delivered.pop("kafka", None)  # raw records are never delivered, only dead-lettered
        parts.append(
            f"accepted {sum(progress.events_in.values())}, refused {sum(progress.refused.values())}"
        )
        parts.append(
            "delivered " + ", ".join(f"{system} {n}" for system, n in sorted(delivered.items()))
        )
        parts.append(
            f"DLQ {sum(s.dead_lettered for s in progress.streams)}, "
            f"waiting {sum(s.outstanding for s in progress.streams)}"
        )
    if frame.current is not None:
        items = frame.current.items().values()
        lag = sum(item["lag"] or 0 for item in items)
        in_flight = sum(item["in_flight"] or 0 for item in items)
        open_breakers = [item["name"] for item in items if item["breaker"] == "open"]
        parts.append(f"lag {lag}, in flight {in_flight}")
        parts.append("open breakers: " + (", ".join(open_breakers) or "none"))
    parts.extend(frame.problems)
    parts.append(frame.status)
    return " | ".join(parts)
