"""Trace context on every event, and spans over OTLP when an endpoint is configured.

Every event carries a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`): a new trace for
an event that starts something (an ingested event, a run request), the same trace for
everything it causes (`Event.child()`), so a run is one trace, and an ingested event and
all that follows from it another.

Spans are recorded and exported only when OpenTelemetry's SDK is installed (the `otel`
extra) and `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard OTEL_* variables apply):
each message a service handles is a span whose parent is the span its event names, and
the events it publishes while handling it name that span. Without them, events still
carry their trace (each with a span id of its own), for whoever exports them later.
"""

import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:  # the `otel` extra
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - exercised by a light install
    trace = None  # type: ignore[assignment]

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def new_traceparent(trace_id: str | None = None) -> str:
    """A new span id in trace `trace_id` (a new trace when None), sampled."""
    return f"00-{trace_id or secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def traceparent_for(key: str) -> str:
    """A new trace named by `key` (an event id): the same event, re-sent or redelivered,
    starts the same trace."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"00-{digest[:32]}-{digest[32:48]}-01"


def trace_id(traceparent: str | None) -> str | None:
    match = TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


def next_traceparent(parent: str | None) -> str:
    """The traceparent of an event caused by one carrying `parent`: the span handling it
    when this process records one in the same trace, else the same trace, a new span id."""
    same_trace = trace_id(parent)
    active = _active()
    if active is not None and trace_id(active) == same_trace:
        return active
    return new_traceparent(same_trace)


def _active() -> str | None:
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@contextmanager
def handling(name: str, traceparent: str | None, **attributes: Any) -> Iterator[None]:
    """A span for handling one event, child of the span its traceparent names (no-op when
    no tracer is configured)."""
    if trace is None or TRACEPARENT.match(traceparent or "") is None:
        yield
        return
    context = TraceContextTextMapPropagator().extract({"traceparent": traceparent or ""})
    tracer = trace.get_tracer("choreo")
    with tracer.start_as_current_span(
        name, context=context, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ):
        yield


def configure(service: str) -> bool:
    """Export spans over OTLP (gRPC) when an endpoint is configured; True if it is."""
    if trace is None or not any(os.environ.get(v) for v in ENDPOINT_VARIABLES):
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"choreo-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True
