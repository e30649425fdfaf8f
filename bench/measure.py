"""The process under test, measured from outside: CPU seconds over a window, peak RSS, and
which fast paths it really loaded (uvloop, the C extensions of aiokafka and fastavro).

Every scenario runs its subject in a process of its own (`Subject`), so the numbers are that
process's and nothing else's: the load generator, the harness and the broker are elsewhere.
Fast paths are read from /proc/<pid>/maps, the shared objects the process mapped, rather than
from what the harness itself imports: a subject may lack uvloop, or run with
AIOKAFKA_NO_EXTENSIONS, and the report must say so.
"""

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bus.processes import die_with_parent

ROOT = Path(__file__).resolve().parents[1]

# The shared objects whose presence in a process's memory map says a fast path is active.
FAST_PATHS = {
    "uvloop": "/uvloop/loop.",
    "aiokafka_c": "/aiokafka/record/_crecords/",
    "fastavro_c": "/fastavro/_read.",
}


def fast_paths(pid: int) -> dict[str, bool]:
    """Which of FAST_PATHS the process `pid` has mapped (Linux); all False elsewhere."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return dict.fromkeys(FAST_PATHS, False)
    return {name: marker in maps for name, marker in FAST_PATHS.items()}


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB; its current RSS where VmHWM is unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float(psutil.Process(pid).memory_info().rss) / 2**20


@dataclass
class Run:
    """One repetition of a scenario."""

    rate: float  # messages (or requests) per second over the measured window
    cpu_s: float  # CPU seconds (user + system) of the process under test over that window
    peak_rss_mb: float
    messages: int  # how many were measured
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScenarioResult:
    """Every repetition of one scenario, and what they ran on."""

    name: str
    description: str
    runs: list[Run]
    message_bytes: int
    partitions: int
    fast_paths: dict[str, bool]
    unit: str = "msg/s"
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON form: medians, min and max over the repetitions, and every run."""
        rates = [run.rate for run in self.runs]

        def median_of(name: str) -> float | None:
            values = [getattr(run, name) for run in self.runs if getattr(run, name) is not None]
            return round(statistics.median(values), 3) if values else None

        return {
            "description": self.description,
            "unit": self.unit,
            "rate_median": round(statistics.median(rates), 1),
            "rate_min": round(min(rates), 1),
            "rate_max": round(max(rates), 1),
            "p50_ms": median_of("p50_ms"),
            "p99_ms": median_of("p99_ms"),
            "max_ms": median_of("max_ms"),
            "cpu_s": median_of("cpu_s"),
            "peak_rss_mb": round(max(run.peak_rss_mb for run in self.runs), 1),
            "message_bytes": self.message_bytes,
            "partitions": self.partitions,
            "fast_paths": self.fast_paths,
            "repetitions": len(self.runs),
            "runs": [asdict(run) for run in self.runs],
            **self.extra,
        }


class Subject:
    """The process under test: started with `command`, stopped with SIGTERM (SIGKILL after
    `grace` seconds), its output kept in `log` for when it fails.

        async with Subject([sys.executable, "-m", "bench.subjects.raw_pipe", ...], log=path) as s:
            cpu = s.cpu_seconds()      # at the start of the measured window
            ...
            cpu = s.cpu_seconds() - cpu
            rss = s.peak_rss_mb(); paths = s.fast_paths()
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        grace: float = 20.0,
        cwd: Path = ROOT,
    ) -> None:
        self.command = list(command)
        self.log = log
        self.env = {**os.environ, "PYTHONPATH": _pythonpath(), **(env or {})}
        self.grace = grace
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "the subject is not started"  # noqa: S101
        return self.process.pid

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                preexec_fn=die_with_parent,  # noqa: PLW1509 -- prctl only, no locks taken
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        """Raise, with the end of its log, if the subject exited."""
        if not self.alive():
            code = self.process.returncode if self.process else None
            raise SubjectFailedError(f"{self.command[2:4]} exited ({code}):\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def rss_mb(self) -> float:
        return float(psutil.Process(self.pid).memory_info().rss) / 2**20

    def fast_paths(self) -> dict[str, bool]:
        return fast_paths(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> int:
        """SIGTERM, wait up to `grace` s, then SIGKILL; the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, self.grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    async def __aenter__(self) -> "Subject":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            await self.stop()


class SubjectFailedError(RuntimeError):
    """The process under test exited before the scenario was over."""


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` (0..1) percentile of `values`, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def python() -> str:
    """The interpreter subjects run with: this one (the project's venv)."""
    return sys.executable


def _pythonpath() -> str:
    # The subjects import `bench` from the repository root; the demo and adapter examples
    # are not needed. An outer PYTHONPATH (a bus checkout to compare with) comes first.
    outer = os.environ.get("PYTHONPATH")
    return os.pathsep.join(filter(None, [outer, str(ROOT)]))
