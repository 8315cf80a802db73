"""Traces: every event of a run carries the run's one trace, and the spans the services
record while handling them form one tree (OpenTelemetry's SDK with its in-memory exporter,
the services in this process on the session's real servers)."""

from collections.abc import Iterator

import asyncpg
import nats
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from choreo.runs import request_run
from shared.settings import Settings
from shared.tracing import TRACEPARENT
from tests.support import wait_for
from tests.workflow_support import wait_run_ended, workflow_services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span this process records (the global provider can be set once per process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()


async def test_a_run_is_one_trace_and_its_spans_form_one_tree(
    spans: InMemorySpanExporter, settings: Settings, db: asyncpg.Connection
) -> None:
    workflow = {
        "name": "traced",
        "steps": [
            {"id": "first", "uses": "transform.sleep", "with": {"seconds": 0, "value": "v"}},
            {"id": "left", "uses": "audit.log", "needs": ["first"], "with": {"message": "l"}},
            {"id": "right", "uses": "audit.log", "needs": ["first"], "with": {"message": "r"}},
            {
                "id": "last",
                "uses": "audit.log",
                "needs": ["left", "right"],
                "with": {"message": "x"},
            },
        ],
    }
    async with workflow_services(settings):
        client = await nats.connect(settings.nats_url)
        try:
            runid = await request_run(client.jetstream(), workflow, {})
            run = await wait_run_ended(db, runid, within=60)
        finally:
            await client.close()
    assert run["status"] == "completed"

    rows = await db.fetch("SELECT type, traceparent FROM events WHERE runid = $1", runid)
    matches = {r["type"]: TRACEPARENT.match(r["traceparent"] or "") for r in rows}
    assert all(matches.values()), rows  # every event carries a traceparent
    trace_ids = {m.group(1) for m in matches.values() if m}
    assert len(trace_ids) == 1, trace_ids  # the run is one trace
    (run_trace,) = trace_ids
    requested = matches["wf.run.requested"]
    assert requested is not None

    def of_run() -> list[ReadableSpan]:
        return [
            s
            for s in spans.get_finished_spans()
            if s.attributes is not None and s.attributes.get("choreo.run.id") == runid
        ]

    # One span per handled request: the run request, four step requests (at least).
    recorded = await wait_for(lambda: _result(of_run()), lambda found: len(found) >= 5)
    ids = {s.context.span_id for s in recorded if s.context is not None}
    assert {f"{s.context.trace_id:032x}" for s in recorded if s.context} == {run_trace}
    roots = [s for s in recorded if s.parent is None or s.parent.span_id not in ids]
    # One root: ingest handling the run request, child of the span the request names.
    assert len(roots) == 1, [(s.name, s.parent) for s in roots]
    (root,) = roots
    assert root.name == "ingest wf.run.requested"
    assert root.parent is not None
    assert f"{root.parent.span_id:016x}" == requested.group(2)
    steps = {str(s.attributes.get("choreo.step.id")) for s in recorded if s.attributes}
    assert {"first", "left", "right", "last"} <= steps


async def _result(found: list[ReadableSpan]) -> list[ReadableSpan]:
    return found
