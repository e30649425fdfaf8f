"""The process's log lines: JSON (or text) with the hop's event id, flow, step and trace id, and
never a secret.

`configure_logging` gives the root logger one handler. Every line it writes went through a
`Redactor`: message, arguments, exception text and traceback, and extra fields alike.
"""

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS, merge_record_extra
from pythonjsonlogger.json import JsonEncoder, JsonFormatter

from bus.flows.model import LogSettings
from bus.telemetry.context import current_hop
from bus.telemetry.secrets import Redactor

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CHATTY_LOGGERS = ("aiokafka",)
"""Loggers kept at WARNING unless the level is debug: they log every connection and rebalance."""

_CORE_FIELDS = ("time", "level", "logger", "message")
_JSON_PRIMITIVES = (int, float, bool, type(None))


def configure_logging(
    settings: LogSettings, secrets: Iterable[str], *, stream: TextIO = sys.stderr
) -> None:
    """Log lines as `settings` say to `stream`, with `secrets` (see `Redactor`) hidden.

    Calling it again replaces the handler it installed rather than adding a second one.
    """
    redactor = Redactor(secrets)
    formatter = JsonLines(redactor) if settings.format == "json" else TextLines(redactor)
    handler = _BusLogHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _BusLogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    chatty = logging.NOTSET if settings.level == "debug" else logging.WARNING
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(chatty)
    # Warnings (a deprecation, an unclosed session) become log lines, redacted like the rest.
    logging.captureWarnings(True)


class _BusLogHandler(logging.StreamHandler[TextIO]):
    """The handler `configure_logging` installs, told apart from others (pytest's, say)."""


def hop_fields() -> dict[str, str]:
    """What is known about the work under way: event id, flow and step from the current hop,
    trace and span ids from the hop, or else from the current OpenTelemetry span."""
    fields: dict[str, str] = {}
    hop = current_hop.get()
    if hop is not None:
        fields["flow"] = hop.flow
        if hop.event_id is not None:
            fields["event_id"] = hop.event_id
        if hop.step is not None:
            fields["step"] = hop.step
        if hop.trace_id is not None and hop.span_id is not None:
            fields["trace_id"], fields["span_id"] = hop.trace_id, hop.span_id
            return fields
    span = trace.get_current_span()
    if span.is_recording():
        context = span.get_span_context()
        fields["trace_id"] = trace.format_trace_id(context.trace_id)
        fields["span_id"] = trace.format_span_id(context.span_id)
    return fields


def _utc_time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{int(record.msecs):03d}Z"


class JsonLines(JsonFormatter):
    """One JSON object per line: time (ISO 8601, UTC, ms), level, logger, message, the hop's
    fields when known (`hop_fields`), `exception` and `stack` text, and any `extra` fields."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__(reserved_attrs=[*RESERVED_ATTRS, "taskName"])
        self._redactor = redactor
        self._encoder = JsonEncoder()

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        # Extras first: the core and hop fields are the formatter's and win over same-named ones.
        merge_record_extra(record, log_data, reserved=self._skip_fields)
        for key, value in message_dict.items():
            name = {"exc_info": "exception", "stack_info": "stack"}.get(key, key)
            if name not in _CORE_FIELDS:
                log_data[name] = value
        log_data["time"] = _utc_time(record)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        log_data |= hop_fields()

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        cleaned: dict[str, Any] = self._clean(log_data)
        return cleaned

    def _clean(self, value: object) -> Any:
        """`value` with every text in it redacted; other objects as their JSON form would be."""
        if isinstance(value, str):
            return self._redactor.redact(value)
        if isinstance(value, _JSON_PRIMITIVES):
            return value
        if isinstance(value, dict):
            return {
                self._redactor.redact(str(key)): self._clean(item) for key, item in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(item) for item in value]
        return self._clean(self._encoder.default(value))


class TextLines(logging.Formatter):
    """`time LEVEL logger: message [flow=... event=...]`, the bracket when a hop is under way."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__(TEXT_FORMAT)
        self._redactor = redactor

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 -- logging's name
        fields = hop_fields()
        about = " ".join(
            f"{label}={fields[key]}"
            for label, key in (("flow", "flow"), ("event", "event_id"))
            if key in fields
        )
        line = super().formatMessage(record)
        return f"{line} [{about}]" if about else line

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.redact(super().format(record))
