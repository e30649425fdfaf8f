"""The summary printed when the demo stops: what came in, what reached each system, what is in
a dead-letter queue and why, what is still pending, and the number that matters, lost."""

from demo.accounting import Stream, Summary


def summary_lines(summary: Summary) -> list[str]:
    lines = [f"── summary of run {summary.run_id} " + "─" * 50]
    events_in = sum(summary.events_in.values())
    detail = ", ".join(f"{kind} {n}" for kind, n in summary.events_in.items())
    lines.append(f"events in (accepted by the bus, 202): {events_in}  ({detail})")
    refused = ", ".join(f"{kind} → {n}" for kind, n in summary.refused.items()) or "none"
    lines.append(f"refused at the door: {sum(summary.refused.values())}  ({refused})")
    if summary.unanswered:
        lines.append(f"not answered by the bus (never in): {summary.unanswered}")
    lines.append(f"raw records written to Kafka directly (legacy producer): {summary.raw_written}")
    return lines + _deliveries(summary) + _dead_letters(summary) + _verdict(summary)


def _deliveries(summary: Summary) -> list[str]:
    lines = ["delivered, once per idempotency key, as the systems recorded it:"]
    width = max(len(stream.name) for stream in summary.streams)
    for stream in summary.streams:
        if stream.system == "kafka":  # raw records: never delivered, only dead-lettered
            continue
        line = f"  {stream.name:<{width}}  → {stream.system:<7} {stream.delivered:>5} of "
        notes = _notes(stream)
        line += f"{stream.expected:<5}" + (f"  ({'; '.join(notes)})" if notes else "")
        lines.append(line.rstrip())
    per_system = summary.delivered_by_system()
    per_system.pop("kafka", None)
    lines.append(
        "  per system: " + ", ".join(f"{system} {n}" for system, n in sorted(per_system.items()))
    )
    return lines


def _notes(stream: Stream) -> list[str]:
    notes = []
    if stream.duplicates:
        notes.append(f"{stream.duplicates} duplicate call(s) acted on again, counted")
    if stream.deduplicated:
        notes.append(f"{stream.deduplicated} repeat(s) deduplicated by the system")
    if stream.replayed:
        notes.append(f"{stream.replayed} dead letter(s) delivered after a replay")
    if stream.unexpected:
        notes.append(f"{stream.unexpected} unexpected")
    if stream.pending:
        notes.append(f"{stream.pending} pending")
    if stream.lost:
        notes.append(f"{stream.lost} LOST")
    return notes


def _dead_letters(summary: Summary) -> list[str]:
    lines = ["dead letters this run added, per topic:"]
    shown = [letters for letters in summary.dead_letters if letters.added or letters.expected]
    for letters in shown:
        mark = "as expected" if letters.as_expected else "NOT as expected"
        if letters.unexpected:
            mark += f", {letters.unexpected} for no expected event"
        if letters.missing:
            mark += f", {letters.missing} expected one(s) missing"
        if not (letters.as_expected or summary.drained):
            mark += ", maybe still on their way: the drain did not finish"
        lines.append(
            f"  {letters.topic:<28} {letters.added:>4}  (expected {letters.expected}: "
            f"{letters.why}; {mark})"
        )
        for reason, count in list(letters.reasons.items())[:3]:
            lines.append(f"      {count}x {reason}")
    if not shown:
        lines.append("  none")
    return lines


def _verdict(summary: Summary) -> list[str]:
    if summary.drained:
        return [
            "pending: 0 (drained: every item's lag and in-flight records were 0)",
            f"lost: {summary.lost}  (expected deliveries neither delivered, nor dead-lettered, "
            "nor pending)",
        ]
    return [
        f"pending: {summary.pending} (the drain did not finish: still in Kafka, not lost; "
        "the next `bus run` delivers them)",
        f"lost: {summary.lost}, NOT VERIFIED  (the drain did not finish: what is missing "
        "counts as pending as far as its items left records in Kafka, an estimate; a longer "
        "--drain-timeout verifies it)",
    ]
