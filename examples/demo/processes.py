"""The demo's child processes: each in a session of its own, its output in a log file, waited
for until ready, and stopped for sure.

A session of its own means a Ctrl-C in the terminal reaches the launcher only, which then stops
each child in the right order (the bus drains before the systems it calls go away).
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bus.processes import die_with_parent
from demo.errors import DemoError

TAIL_LINES = 25
TERM_GRACE = 5.0  # seconds from SIGTERM to SIGKILL
KILL_WAIT = 5.0  # seconds for the kernel to end a killed child
HURRIED_GRACE = 3.0  # at most, for any step, once the user asked twice to stop
POLL = 0.1


@dataclass
class Child:
    name: str
    process: "subprocess.Popen[bytes]"
    log: Path

    @classmethod
    def start(
        cls,
        name: str,
        command: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str],
        cwd: Path,
    ) -> "Child":
        """Launch `command`. Call it from the event loop's thread: Linux sends the death signal
        when the thread that forked the child ends, and a worker thread ends early."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as output:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                # If the launcher is killed outright, its children must not outlive it.
                preexec_fn=die_with_parent,  # noqa: PLW1509 -- only prctl, async-signal-safe
            )
        return cls(name, process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no output)"

    def failure(self, what: str) -> DemoError:
        return DemoError(f"{what}. Last lines of {self.log}:\n{self.tail()}")

    async def wait_for_line(self, needle: str, within: float) -> str:
        """The first line of the log that contains `needle`, once written."""
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(FileNotFoundError):
                for line in self.log.read_text(errors="replace").splitlines():
                    if needle in line:
                        return line
            if not self.running():
                raise self.failure(f"{self.name} exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                raise self.failure(f"{self.name} did not say {needle!r} within {within:.0f} s")
            await asyncio.sleep(0.1)

    async def stop(
        self, first: signal.Signals, grace: float, hurry: asyncio.Event | None = None
    ) -> int:
        """Send `first`, then SIGTERM, then SIGKILL, each after a deadline, until the child and
        anything it started in its session are gone; the child's exit code. Once `hurry` is
        set, no deadline is more than HURRIED_GRACE away."""
        steps = ((first, grace), (signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, KILL_WAIT))
        for signum, within in steps:
            if not self.running():
                break
            self.signal_group(signum)
            await self._ended(within, hurry)
        # The child ended; whatever it left in its process group ends too.
        self.signal_group(signal.SIGKILL)
        return self.process.wait()

    def signal_group(self, signum: signal.Signals) -> None:
        # start_new_session: the child leads its own group, whose id is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    async def _ended(self, within: float, hurry: asyncio.Event | None) -> None:
        """Until the child ended, or `within` seconds (fewer once `hurry` is set)."""
        deadline = time.monotonic() + within
        hurried = False
        while self.running() and time.monotonic() < deadline:
            if hurry is not None and hurry.is_set() and not hurried:
                hurried = True
                deadline = min(deadline, time.monotonic() + HURRIED_GRACE)
            await asyncio.sleep(POLL)
