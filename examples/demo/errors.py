"""The one error the demo shows its user: what went wrong and what to do about it."""


class DemoError(Exception):
    """A start-up or run failure, phrased for the person at the terminal (no traceback)."""
