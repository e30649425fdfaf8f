"""`bus trace`'s timeline: a line per hop, in time order, indented as the journey branches; under
a hop its error and, for a dead letter, the command that replays it; outputs that no hop has
consumed yet as leaves (where the journey waits, or is stuck):

     +0.020s  └─ mediation customer-router  processed  crm.customer-changed.v1[0]@12  3.0 ms …
     +0.060s     └─ outbound erp-us  dead-lettered  erp.us.customer-upsert.v1[1]@7  250.0 ms …
                    │  error at call: PermanentDeliveryError: 422 from http://erp-us/customers …
                    │  replay: bus dlq replay erp-us --partition 0 --offset 4
+0:05:00.000        └─ replay erp-us  replayed  erp-us.dlq[0]@4 → erp.us.customer-upsert.v1[1]@9 …
+0:05:00.200           └─ outbound erp-us  delivered  erp.us.customer-upsert.v1[1]@9  80.0 ms …
                          └─ … erp.customer-upserted.v1[1]@8  event 9c1f…: not consumed yet
"""

import shlex
from typing import Any

import click

from bus.flows.model import default_dlq
from bus.telemetry.journey_tree import Journey, JourneyHop, Output

_GOOD = frozenset({"accepted", "processed", "delivered", "replayed"})
_BAD = frozenset({"failed", "dead-lettered"})
_NEXT, _LAST = "├─ ", "└─ "
_BELOW = {"": "", _NEXT: "│  ", _LAST: "   "}  # what a hop's branch leaves for the lines below


def render_journey(journey: Journey, *, color: bool = False) -> str:
    """The journey as terminal text; with `color`, outcomes in ANSI colours (click.echo strips
    them again when stdout is not a terminal)."""
    summary = journey.summary()
    problems = [
        f"{summary['dead_lettered']} dead-lettered",
        f"{summary['failed']} failed",
        f"{summary['pending_outputs']} output(s) not consumed yet",
    ]
    header = [
        f"journey of root event {journey.root_id}",
        f"{summary['hops']} hop(s) from {summary['first']} to {summary['last']}; "
        + ", ".join(problems),
        "",
    ]
    first = min((hop.started for _, hop in journey.hops()), default=0.0)
    rows: list[tuple[str, str]] = []  # (time since the first hop, or nothing; the tree's line)
    for hop in journey.roots:
        _render(hop, first, rows, lead="", branch="", color=color)
    width = max((len(when) for when, _ in rows), default=0)
    return "\n".join(header + [f"{when:>{width}}  {line}" for when, line in rows])


def _render(
    hop: JourneyHop,
    first: float,
    rows: list[tuple[str, str]],
    *,
    lead: str,
    branch: str,
    color: bool,
) -> None:
    rows.append((f"+{_offset(hop.started - first)}", lead + branch + _hop_line(hop, color=color)))
    inner = lead + _BELOW[branch]
    below = inner + ("│  " if hop.children or hop.pending else "   ")
    rows.extend(("", below + detail) for detail in _details(hop))
    count = len(hop.children) + len(hop.pending)
    for index, child in enumerate(hop.children):
        branch = _LAST if index == count - 1 else _NEXT
        _render(child, first, rows, lead=inner, branch=branch, color=color)
    letter = hop.dead_letter
    for index, output in enumerate(hop.pending, start=len(hop.children)):
        branch = _LAST if index == count - 1 else _NEXT
        waiting = _pending(output, is_letter=output is letter)
        rows.append(("", inner + branch + _paint(waiting, "yellow", color)))


def _hop_line(hop: JourneyHop, *, color: bool) -> str:
    record = hop.record
    outcome = hop.outcome or "unfinished"
    tint = "green" if outcome in _GOOD else "red" if outcome in _BAD else None
    parts = [f"{hop.kind} {hop.flow}", _paint(outcome, tint, color), _where(hop)]
    parts.append(_duration(record.get("duration_ms")))
    if hop.kind == "outbound":
        status = record.get("status")
        parts.append(
            f"attempts {record.get('attempts')}, "
            + ("no answer" if status is None else f"status {status}")
        )
    if hop.kind == "mediation" and hop.outcome == "processed":
        parts.append(f"{len(record['outputs'])} output(s)")
    event = f"event {hop.event_id}" if hop.event_id else "undecodable record"
    if record.get("event_type"):
        event += f" ({record['event_type']})"
    parts.append(event)
    return "  ".join(parts)


def _where(hop: JourneyHop) -> str:
    here = _position(hop.record)
    if hop.kind == "inbound":
        return f"→ {here}"
    if hop.kind == "replay":
        sent = [_position(output) for output in hop.record["outputs"]]
        return f"{here} → {', '.join(sent) or '(not sent)'}"
    return here


def _details(hop: JourneyHop) -> list[str]:
    details = []
    if hop.record.get("error"):
        step = hop.record.get("step")
        details.append(f"error{f' at {step}' if step else ''}: {hop.record['error']}")
    if hop.outcome == "dead-lettered":
        details.append(f"replay: {_replay_command(hop)}")
    return details


def _replay_command(hop: JourneyHop) -> str:
    letter = hop.dead_letter
    if letter is None or letter.get("partition") is None or letter.get("offset") is None:
        return f"the letter's position was not recorded; find it with `bus dlq list {hop.flow}`"
    command = ["bus", "dlq", "replay", hop.flow, "--partition", str(letter["partition"])]
    command += ["--offset", str(letter["offset"])]
    if letter.get("topic") != default_dlq(hop.flow):  # `bus dlq` assumes <flow>.dlq otherwise
        command += ["--topic", str(letter.get("topic"))]
    return shlex.join(command)


def _pending(output: Output, *, is_letter: bool) -> str:
    event = f"event {output.get('event_id')}"
    if is_letter:
        return f"dead letter {_position(output)}  {event}: not replayed yet"
    return f"… {_position(output)}  {event}: not consumed yet"


def _position(place: dict[str, Any]) -> str:
    topic = place.get("topic") or "?"
    partition, offset = place.get("partition"), place.get("offset")
    if partition is None:
        return str(topic)
    return f"{topic}[{partition}]" + ("" if offset is None else f"@{offset}")


def _offset(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3f}s"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{rest:06.3f}"


def _duration(duration_ms: object) -> str:
    if not isinstance(duration_ms, int | float):
        return "? ms"
    return f"{duration_ms:.1f} ms" if duration_ms < 1000 else f"{duration_ms / 1000:.2f} s"


def _paint(text: str, tint: str | None, color: bool) -> str:
    return click.style(text, fg=tint) if color and tint else text
