"""The run's JSON and its table: every scenario's summary, the ratios the issue asks for, and
whether each target is met.

Ratios are only ever taken between scenarios of the same run (same broker, same machine, same
minute); a ratio whose two scenarios did not both run is left out rather than guessed.
"""

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.measure import ROOT

Summary = Mapping[str, Any]

# (ratio name, numerator scenario, denominator scenario, the target: numerator ≥ target x
# denominator, or None for an informative ratio)
RATE_RATIOS: list[tuple[str, str, str, float | None]] = [
    ("bus-passthrough / raw-pipe", "bus-passthrough", "raw-pipe", 0.85),
    ("bus-mediation / raw-avro-pipe", "bus-mediation", "raw-avro-pipe", 0.85),
    ("bus-mediation / faststream-each", "bus-mediation", "faststream-each", None),
    ("bus-mediation / faststream-batch", "bus-mediation", "faststream-batch", None),
    ("bus-mediation-eos / bus-mediation", "bus-mediation-eos", "bus-mediation", 0.5),
    ("bus-mediation-2proc / bus-mediation", "bus-mediation-2proc", "bus-mediation", None),
    ("bus-mediation-2proc / raw-avro-pipe", "bus-mediation-2proc", "raw-avro-pipe", None),
    ("bus-ingest / raw-ingest", "bus-ingest", "raw-ingest", 0.7),
]
FASTER_FASTSTREAM = "bus-mediation / faststream (faster idiom)"
E2E_P99_TARGET_MS = 50.0
# "No RSS growth beyond noise": RSS swings by megabytes with the batch in hand, so one sample
# against another says little; the least-squares trend over the soak, against the spread of
# the samples around it, says whether memory grows.
SOAK_NOISE_SDS = 2.0


def ratios(scenarios: Mapping[str, Summary]) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """The ratios and the targets (each: target, value, met) of one run's scenarios."""
    values: dict[str, float] = {}
    targets: dict[str, dict[str, Any]] = {}

    def rate(name: str) -> float | None:
        summary = scenarios.get(name)
        return summary["rate_median"] if summary and summary.get("rate_median") else None

    def add(name: str, value: float, target: str | None, met: Callable[[float], bool]) -> None:
        values[name] = round(value, 3)
        if target is not None:
            targets[name] = {"target": target, "value": round(value, 3), "met": met(value)}

    for name, numerator, denominator, minimum in RATE_RATIOS:
        top, bottom = rate(numerator), rate(denominator)
        if top is not None and bottom is not None:
            add(name, top / bottom, f"≥ {minimum}" if minimum else None, _at_least(minimum or 0))
    idioms = [r for r in (rate("faststream-each"), rate("faststream-batch")) if r is not None]
    mediation = rate("bus-mediation")
    if mediation is not None and idioms:
        add(FASTER_FASTSTREAM, mediation / max(idioms), "> 1.0", lambda v: v > 1.0)
    codec = scenarios.get("codec")
    if codec:
        # bench.codec puts its overhead ratios (bus's time per event / fastavro's) in its summary.
        for key, value in codec.items():
            if "overhead" in key and isinstance(value, int | float):
                add(f"codec {key}", float(value), None, _at_least(0))
    e2e = scenarios.get("e2e-latency")
    if e2e and e2e.get("p99_ms") is not None:
        add(
            "e2e-latency p99 ms",
            e2e["p99_ms"],
            f"< {E2E_P99_TARGET_MS:g}",
            lambda v: v < E2E_P99_TARGET_MS,
        )
        # The target is at 1,000 events/s; quick mode offers less.
        targets["e2e-latency p99 ms"]["at_rate"] = e2e.get("target_rate")
    soak = scenarios.get("soak")
    series = soak.get("rss_series_mb") or [] if soak else []
    if soak and len(series) >= 3:
        values["soak RSS last - first MB"] = soak["rss_growth_mb"]
        trend, noise = rss_trend(series)
        values["soak RSS noise MB (sd around the trend)"] = round(noise, 3)
        add(
            "soak RSS trend MB over the soak",
            trend,
            f"≤ {SOAK_NOISE_SDS:g} sd of noise ({SOAK_NOISE_SDS * noise:.1f} MB)",
            lambda v: v <= SOAK_NOISE_SDS * noise,
        )
    return values, targets


def rss_trend(series: list[list[float]]) -> tuple[float, float]:
    """The least-squares growth of RSS over the soak (MB, from its first sample to its last),
    and the standard deviation of the samples around that line (MB)."""
    seconds, rss = [point[0] for point in series], [point[1] for point in series]
    slope, intercept = statistics.linear_regression(seconds, rss)
    residuals = [y - (slope * x + intercept) for x, y in zip(seconds, rss, strict=True)]
    return slope * (seconds[-1] - seconds[0]), statistics.pstdev(residuals)


def _at_least(minimum: float) -> Callable[[float], bool]:
    return lambda value: value >= minimum


def run_info(*, quick: bool, kafka_version: str, **more: Any) -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "machine": {
            "platform": platform.platform(),
            "cpu_model": _cpu_model(),
            "ram_gb": _ram_gb(),
        },
        "kafka_version": kafka_version,
        "bus_commit": _commit(),
        **more,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _commit() -> str:
    def git(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *arguments],  # noqa: S607 -- git from PATH
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )

    head = git("rev-parse", "--short=12", "HEAD")
    if head.returncode != 0:
        return "unknown"
    # Tracked files changed since the commit: the numbers are of a working tree, not of HEAD.
    dirty = git("diff", "--quiet", "HEAD", "--", "bus", "adapters", "bench").returncode != 0
    return head.stdout.strip() + ("-dirty" if dirty else "")


def _number(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


FLAGS = (("uvloop", "uvloop"), ("aiokafka_c", "aiokafka C"), ("fastavro_c", "fastavro C"))


def table(report: Mapping[str, Any]) -> str:
    """The run as Markdown: what it ran on, one row per scenario, the ratios and targets."""
    run = report["run"]
    machine = run["machine"]
    lines = [
        f"# bench {'quick ' if run['quick'] else ''}run {run['date']}",
        "",
        f"bus {run['bus_commit']}, Python {run['python']}, Kafka {run['kafka_version']}, "
        f"{run['cpus']} CPUs ({machine['cpu_model']}), {machine['ram_gb']} GB RAM, "
        f"{machine['platform']}. {run.get('note', '')}",
        "",
        "| scenario | unit | median | min | max | p50 ms | p99 ms | max ms | CPU s | peak RSS MB "
        "| msg bytes | parts | reps | " + " | ".join(label for _, label in FLAGS) + " |",
        "|---" * (13 + len(FLAGS)) + "|",
    ]
    for name, s in report["scenarios"].items():
        flags = [("yes" if s["fast_paths"].get(key) else "no") for key, _ in FLAGS]
        cells = [
            name,
            s["unit"],
            _number(s["rate_median"], 0),
            _number(s["rate_min"], 0),
            _number(s["rate_max"], 0),
            _number(s["p50_ms"], 2),
            _number(s["p99_ms"], 2),
            _number(s["max_ms"], 2),
            _number(s["cpu_s"], 2),
            _number(s["peak_rss_mb"]),
            _number(s["message_bytes"]),
            _number(s["partitions"]),
            _number(s["repetitions"]),
            *flags,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| ratio (same run) | value | target | met |", "|---|---|---|---|"]
    for name, value in report["ratios"].items():
        target = report["targets"].get(name)
        met = "-" if target is None else ("yes" if target["met"] else "**no**")
        wanted = target["target"] if target else ""
        if target and target.get("at_rate"):
            wanted += f" at {target['at_rate']:,.0f}/s"
        lines.append(f"| {name} | {_number(value, 3)} | {wanted} | {met} |")
    if report.get("failures"):
        lines += ["", "## Failed"]
        lines += [
            f"- **{name}**: {error.splitlines()[0]}" for name, error in report["failures"].items()
        ]
    if report.get("skipped"):
        lines += [
            "",
            "Not run: " + ", ".join(f"{n} ({why})" for n, why in report["skipped"].items()),
        ]
    return "\n".join(lines) + "\n"
