"""Injected transient failures: the bad days real systems have, on purpose and on a seed.

Each system draws from its own `random.Random`, seeded from one per-process seed and the
system's name, so a run can be repeated exactly (`DEMO_SEED=<n>`; the seed in use is logged at
start) and one system's traffic does not shift another's dice. `DEMO_FAULTS=off` turns all of it
off, for tests that count exact calls.
"""

import logging
import os
import random
from collections.abc import Mapping

log = logging.getLogger(__name__)


class FaultInjector:
    """Decides, call by call, whether a call fails on purpose, and how."""

    def __init__(self, rng: random.Random | None) -> None:
        """`rng`: the dice; None: never inject anything."""
        self._rng = rng

    @classmethod
    def off(cls) -> "FaultInjector":
        return cls(None)

    @classmethod
    def seeded(cls, seed: int, system: str) -> "FaultInjector":
        # A text seed is hashed (SHA-512), so the same seed and name give the same dice on any
        # machine and Python version.
        return cls(random.Random(f"{seed}/{system}"))  # noqa: S311 -- dice, not secrets

    @property
    def enabled(self) -> bool:
        return self._rng is not None

    def pick(self, chances: Mapping[str, float]) -> str | None:
        """One roll of the dice: the name of the failure it lands on, or None (most calls).

        `chances` maps each kind of failure to its probability, e.g. {"503": 0.04, "429": 0.03};
        they are mutually exclusive, so one call suffers at most one of them.
        """
        if self._rng is None:
            return None
        roll = self._rng.random()
        for kind, chance in chances.items():
            if roll < chance:
                return kind
            roll -= chance
        return None


def process_seed(environ: Mapping[str, str] | None = None) -> int | None:
    """The seed for this process's fault injection, or None when `DEMO_FAULTS=off`.

    `DEMO_SEED` repeats an earlier run's dice; otherwise a fresh seed is drawn and logged, so an
    interesting run can be repeated afterwards.
    """
    environ = os.environ if environ is None else environ
    switch = environ.get("DEMO_FAULTS", "") or "on"
    if switch not in ("on", "off"):
        raise ValueError(f"DEMO_FAULTS must be on or off, not {switch!r}")
    if switch == "off":
        log.info("fault injection off (DEMO_FAULTS=off)")
        return None
    text = environ.get("DEMO_SEED", "")
    seed = int(text) if text else random.SystemRandom().randrange(1_000_000)
    log.info("fault injection on, seed %d (DEMO_SEED=%d repeats this run's failures)", seed, seed)
    return seed


def injector(seed: int | None, system: str) -> FaultInjector:
    """The injector of one system: `seed` from `process_seed`, None for none."""
    return FaultInjector.off() if seed is None else FaultInjector.seeded(seed, system)
