"""The admin API of a `bus run` process (health, readiness, metrics, flows, journeys, dead
letters) on a port and auth of its own, and `bus top`, the live terminal view that reads it."""
