"""What `bus top` shows: one row per item of two successive GET /flows answers, with rates
from the counters' differences between them."""

from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text

STATE_STYLE = {
    "running": "green",
    "starting": "yellow",
    "restarting": "bold red",
    "stopped": "dim",
}
BREAKER_STYLE = {"closed": "green", "half-open": "yellow", "open": "bold red"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One GET /flows answer, and when it came (monotonic seconds, on our clock)."""

    at: float
    flows: dict[str, Any]

    def items(self) -> dict[str, dict[str, Any]]:
        return {item["name"]: item for item in self.flows["items"]}


def flows_table(current: Sample, previous: Sample | None, *, source: str) -> Table:
    """The table of `current`; rates need `previous` (a dash without it)."""
    table = Table(title=f"bus top: {source}", title_justify="left")
    for header in ("item", "kind", "state"):
        table.add_column(header)
    for header in ("in/s", "out/s", "failed", "failed/s", "dead-lettered", "lag", "in-flight"):
        table.add_column(header, justify="right")
    table.add_column("breaker")
    before = previous.items() if previous is not None else {}
    elapsed = current.at - previous.at if previous is not None else 0.0
    now = current.flows["now"]
    for name, item in current.items().items():
        counters = item["counters"]
        earlier = before.get(name, {}).get("counters")
        state = item["state"]
        breaker = item["breaker"]
        table.add_row(
            name,
            item["kind"],
            Text(f"{state} {_age(now - item['since'])}", style=STATE_STYLE.get(state, "")),
            rate(counters, earlier, "in", elapsed),
            rate(counters, earlier, "out", elapsed),
            str(counters["failed"]),
            rate(counters, earlier, "failed", elapsed),
            str(counters["dead_lettered"]),
            "-" if item["assigned_partitions"] is None else str(item["lag"]),
            "-" if item["in_flight"] is None else str(item["in_flight"]),
            Text(breaker or "-", style=BREAKER_STYLE.get(breaker or "", "")),
        )
    return table


def rate(
    counters: dict[str, int], earlier: dict[str, int] | None, counter: str, elapsed: float
) -> str:
    if earlier is None or elapsed <= 0 or counters[counter] < earlier[counter]:
        return "-"  # no earlier poll, or the process restarted in between
    return f"{(counters[counter] - earlier[counter]) / elapsed:.1f}"


def _age(seconds: float) -> str:
    """A short age: 42s, 7m03s, 5h12m, 3d04h."""
    whole = max(0, int(seconds))
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
