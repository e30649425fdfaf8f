# Every target sets up what it needs, idempotently, so any of them works first on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BUS := $(VENV)/bin/bus
SOURCES := bus adapters tests bench examples

export UV_PYTHON_DOWNLOADS := never

.PHONY: help setup kafka-jars run test chaos lint bench bench-tracing kafka-start kafka-stop kafka-status lock clean

help:
	@echo "make run    the demo: Kafka (local unless KAFKA_BOOTSTRAP_SERVERS), the demo systems, bus run on examples/flows,"
	@echo "           a steady load and a live view; Ctrl-C drains, stops all and prints the summary (ARGS=\"--help\")"
	@echo "make test   set up, lint, and run the test suite against real Kafka brokers (two workers)"
	@echo "make chaos  the long fault runs (worker crashes, broker restarts, a 3-broker cluster, outages):"
	@echo "           counts into .bus/chaos-results.json, quoted in docs/reliability.md"
	@echo "make lint   ruff and mypy --strict"
	@echo "make bench  throughput, latency and memory against the raw limits and FastStream (the soak alone: 10 min;"
	@echo "           QUICK=1: under 2 minutes, into bench/results-partial.*): bench/results.json and .md"
	@echo "make bench-tracing   what tracing and journeys cost a mediation flow (a few minutes)"
	@echo "make kafka-start | kafka-stop | kafka-status   the local development broker"
	@echo "make lock   re-resolve uv.lock after editing dependencies;  make clean   remove .venv .tools .bus"

# uv itself is pinned and kept in its own small venv, so the project venv is exactly the lock file.
$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --locked --extra dev --extra bench --python $(PYTHON)
	@touch $@

setup: $(VENV)/.synced

kafka-jars: setup
	@$(BUS) kafka fetch

# The demo (examples/demo) starts the local broker when no Kafka is given, fetching the jars first.
run: setup
	PYTHONPATH=examples $(VENV)/bin/python -m demo $(ARGS)

lint: setup
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy

# Two workers, each with its own broker (most tests wait on Kafka or a subprocess), then the few
# tests that measure CPU or rates, alone.
test: lint kafka-jars
	$(VENV)/bin/pytest -n 2 -m "not chaos and not serial" --durations=15
	$(VENV)/bin/pytest -m serial

chaos: kafka-jars
	$(VENV)/bin/pytest tests/chaos -m chaos --timeout 900

bench: kafka-jars
	$(VENV)/bin/python -m bench $(if $(QUICK),--quick)

bench-tracing: kafka-jars
	$(VENV)/bin/python -m bench.tracing_overhead

kafka-start: kafka-jars
	$(BUS) kafka start

kafka-stop: setup
	$(BUS) kafka stop

kafka-status: setup
	$(BUS) kafka status

lock: $(UV)
	$(UV) lock --python $(PYTHON)

clean:
	rm -rf $(VENV) $(TOOLS) .bus .mypy_cache .ruff_cache .pytest_cache
