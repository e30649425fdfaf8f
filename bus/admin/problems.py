"""The admin API's own problem types: what the SRE calling it gets when an answer is missing."""

from bus.http.problem import Problem

RETRY_AFTER_S = 5  # Kafka answers again within seconds of coming back; probes retry sooner


def unavailable(detail: str) -> Problem:
    return Problem(
        503,
        "kafka-unavailable",
        "Kafka unavailable",
        f"{detail}; check GET /readyz, and try again once Kafka answers",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def unknown(what: str, detail: str) -> Problem:
    return Problem(404, f"unknown-{what}", f"Unknown {what.replace('-', ' ')}", detail)


def busy(detail: str) -> Problem:
    return Problem(
        503,
        "busy",
        "Busy",
        f"{detail}; try again in a few seconds",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
