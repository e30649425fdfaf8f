"""Traces, event journeys, metrics, logs and item status of a `bus run` process."""
