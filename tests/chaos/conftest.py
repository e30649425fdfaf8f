"""`make chaos`: the long fault runs (crashes, broker restarts, a replicated cluster, outages).

Every test under tests/chaos is marked `chaos`, which `make test` deselects. Each scenario
records what it counted with the `chaos_results` fixture; at the end of the run the counts
are written to `.bus/chaos-results.json` (what docs/reliability.md quotes) and printed.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS_FILE = ROOT / ".bus" / "chaos-results.json"

_results: dict[str, dict[str, Any]] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.chaos)


class ChaosResults:
    """What one scenario counted: `chaos_results.record("worker-crash", sent=..., lost=0)`."""

    def record(self, scenario: str, **counts: Any) -> None:
        finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _results[scenario] = {"finished": finished, **counts}


@pytest.fixture(scope="session")
def chaos_results() -> Iterator[ChaosResults]:
    yield ChaosResults()
    if not _results:
        return
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    earlier: dict[str, Any] = {}
    if RESULTS_FILE.exists():
        earlier = json.loads(RESULTS_FILE.read_text())
    RESULTS_FILE.write_text(json.dumps({**earlier, **_results}, indent=2, sort_keys=True) + "\n")
    for scenario, counts in sorted(_results.items()):
        print(f"chaos {scenario}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
