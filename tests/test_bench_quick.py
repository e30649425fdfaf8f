"""`make bench QUICK=1` keeps working: the harness runs every scenario of issue 9 in quick mode
on a broker of its own and writes the JSON and the table, with every number the issue asks for.

It checks the harness, not the numbers: quick counts are small, and what a run measures depends
on the machine; only that each scenario measured something, as often as it said it would.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# It measures CPU and rates: alone, after the two-worker run (make test), not beside other tests.
pytestmark = pytest.mark.serial

# Issue 9's scenarios; the soak runs in full mode only.
PIPES = [
    "raw-pipe",
    "raw-avro-pipe",
    "bus-passthrough",
    "bus-mediation",
    "bus-mediation-2proc",
    "bus-mediation-eos",
    "faststream-each",
    "faststream-batch",
]
WITH_LATENCY = ["raw-ingest", "bus-ingest", "e2e-latency"]
SCENARIOS = [*PIPES, *WITH_LATENCY, "codec"]
# The table's ratios (issue 9: "The table shows the ratios: ...") and the targets it checks.
RATIOS = [
    "bus-passthrough / raw-pipe",
    "bus-mediation / raw-avro-pipe",
    "bus-mediation / faststream-each",
    "bus-mediation / faststream-batch",
    "bus-mediation-eos / bus-mediation",
    "bus-mediation-2proc / bus-mediation",
    "bus-ingest / raw-ingest",
    "codec encode_overhead",
    "codec decode_overhead",
]
TARGETS = [
    "bus-passthrough / raw-pipe",
    "bus-mediation / raw-avro-pipe",
    "bus-mediation / faststream (faster idiom)",
    "bus-mediation-eos / bus-mediation",
    "bus-ingest / raw-ingest",
    "e2e-latency p99 ms",
]
FAST_PATHS = {"uvloop", "aiokafka_c", "fastavro_c"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, float]:
    folder = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "BUS_HOME": str(folder / "bus-home")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # its own broker, as `make bench` on a fresh clone
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(folder / "results.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-4000:]}\n{done.stdout}"
    report = json.loads((folder / "results.json").read_text())
    return report, (folder / "results.md").read_text(), elapsed


@pytest.mark.timeout(240)
def test_quick_bench_measures_every_scenario(quick_run: tuple[dict[str, Any], str, float]) -> None:
    report, _, elapsed = quick_run
    run = report["run"]
    assert run["quick"] is True
    assert run["kafka_version"]
    assert run["bus_commit"]
    assert run["machine"]["cpu_model"]
    assert report["failures"] == {}
    assert "soak" in report["skipped"]
    for name in SCENARIOS:
        scenario = report["scenarios"][name]
        assert scenario["rate_median"] > 0, name
        assert scenario["rate_min"] <= scenario["rate_median"] <= scenario["rate_max"], name
        assert scenario["repetitions"] == len(scenario["runs"]) >= run["repeat"], name
        assert all(r["rate"] > 0 and r["messages"] > 0 for r in scenario["runs"]), name
        assert set(scenario["fast_paths"]) == FAST_PATHS, name
        assert scenario["peak_rss_mb"] > 0, name
        assert scenario["message_bytes"] > 0, name
        assert scenario["partitions"] == 6, name
    for name in WITH_LATENCY:
        scenario = report["scenarios"][name]
        assert 0 < scenario["p50_ms"] <= scenario["p99_ms"] <= scenario["max_ms"], name
    for name in PIPES:  # each run checked its outputs before reporting a rate
        assert all(r["extra"]["outputs"] > 0 for r in report["scenarios"][name]["runs"]), name
    print(f"quick bench: {elapsed:.0f} s")  # the budget is 2 minutes


@pytest.mark.timeout(240)
def test_quick_bench_reports_ratios_and_table(quick_run: tuple[dict[str, Any], str, float]) -> None:
    report, table, _ = quick_run
    for name in RATIOS:
        assert report["ratios"][name] > 0, name
    for name in TARGETS:
        target = report["targets"][name]
        assert isinstance(target["met"], bool), name
        assert target["target"], name
        assert target["value"] == report["ratios"][name], name
    for name in [*SCENARIOS, *RATIOS]:
        assert f"| {name} |" in table, name
