"""OpenTelemetry traces of a `bus run` process: one trace per journey, a span per hop.

Each `Tracing` has a private `TracerProvider`, never the global one: two runs in one process
(tests) do not mix their spans, and nothing else in the process can reconfigure ours. With the
exporter `none` there is no provider at all, and the hub makes no span object on the hot path.

Context travels between hops as W3C `traceparent`/`tracestate` headers: Kafka record headers
(the codec writes `trace` mappings into them), HTTP request headers (inbound and outbound).
"""

import asyncio
import logging
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from bus.flows.model import TracingSettings

TRACE_HEADERS = ("traceparent", "tracestate")
"""The headers that carry trace context, on Kafka records and HTTP requests alike."""
_PROPAGATOR = TraceContextTextMapPropagator()

log = logging.getLogger(__name__)


class Tracing:
    """Where a process's spans go. `tracer` is None when tracing is off."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self._provider = provider
        self.tracer: Tracer | None = None if provider is None else provider.get_tracer("bus")

    @classmethod
    def disabled(cls) -> "Tracing":
        return cls(None)

    @classmethod
    def from_settings(cls, settings: TracingSettings) -> "Tracing":
        """The exporter the flow files chose: none, console (stdout) or OTLP over HTTP (the
        endpoint from the settings, else from the standard OTEL_EXPORTER_OTLP_* variables)."""
        if settings.exporter == "none":
            return cls.disabled()
        exporter: SpanExporter
        if settings.exporter == "console":
            exporter = ConsoleSpanExporter(service_name=settings.service_name)
        else:
            exporter = _otlp_exporter(settings.endpoint)
        return cls.exporting(
            exporter,
            BatchSpanProcessor(exporter),
            service_name=settings.service_name,
            sample_ratio=settings.sample_ratio,
        )

    @classmethod
    def exporting(
        cls,
        exporter: SpanExporter,
        processor: SpanProcessor | None = None,
        *,
        service_name: str = "bus",
        sample_ratio: float = 1.0,
    ) -> "Tracing":
        """Spans to `exporter`, through `processor` (default: exported as each span ends,
        which is what a test with an InMemorySpanExporter wants)."""
        provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
            resource=Resource.create({SERVICE_NAME: service_name}),
            # Shut down by its owner (the runtime), not at interpreter exit after the loop died.
            shutdown_on_exit=False,
        )
        provider.add_span_processor(processor or SimpleSpanProcessor(exporter))
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def start_span(
        self,
        name: str,
        kind: SpanKind,
        *,
        parent: Context | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Span:
        """A span under `parent` (default: the span current in this task). Only called when
        tracing is on."""
        assert self.tracer is not None  # noqa: S101 -- callers check `enabled` first
        return self.tracer.start_span(name, parent, kind, attributes)

    async def close(self, *, within: float) -> None:
        """Export what is buffered, then stop, waiting at most `within` seconds (and saying so
        in a log line when spans were lost).

        The provider's shutdown blocks (the batch processor's flush, the OTLP exporter's
        requests and retries, up to its own timeout): it runs in a thread, so that the event
        loop goes on meanwhile. A flush still running after `within` is left to finish there.
        """
        provider = self._provider
        if provider is None:
            return
        self._provider = None  # closed once; a late span goes to the closed provider: nowhere
        try:
            async with asyncio.timeout(within):
                await asyncio.to_thread(provider.shutdown)
        except TimeoutError:
            log.warning(
                "tracing: the spans still buffered were not exported within %g s; those not "
                "exported yet are lost",
                within,
            )


def extract(carrier: Mapping[str, str]) -> Context:
    """The remote parent a `traceparent`/`tracestate` carrier names (an empty context if none)."""
    return _PROPAGATOR.extract(carrier)


def inject(span: Span) -> dict[str, str]:
    """`traceparent` (and `tracestate`) naming `span`, for the records or requests it causes."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier


def kafka_carrier(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """The trace context headers of a Kafka record, as text."""
    return {
        name: value.decode(errors="replace")
        for name, value in headers
        if name in TRACE_HEADERS and value is not None
    }


def _otlp_exporter(endpoint: str | None) -> SpanExporter:
    # Imported here: the OTLP exporter pulls in protobuf and requests, which a process that
    # does not export to a collector should not pay for at start.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415 -- see above
        OTLPSpanExporter,
    )

    # None: the exporter reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then OTEL_EXPORTER_OTLP_ENDPOINT.
    return OTLPSpanExporter(endpoint=endpoint)
