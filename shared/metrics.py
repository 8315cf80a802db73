"""Prometheus metrics of one service, in a registry of its own.

A registry per service instance (not the global one) lets tests build several apps in one
process. Every name is prefixed `choreo_`; docs/metrics.md lists them.
"""

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, get_args

from nats.aio.msg import Msg
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)

ConsumedOutcome = Literal["ack", "nack", "dlq"]
"""How a consumed message was settled: acknowledged, handed back for redelivery (after a
failure, or to look at again later), or dead-lettered (to dlq.<service>, then terminated)."""
# Workflow events by the state their subject names (`wf.run.<state>`, `wf.step.<state>`,
# `wf.step.<service>.requested`); commands sent by the CLI are not a service's to count.
RUN_STATES = ("started", "completed", "failed", "cancelled")
STEP_STATES = ("requested", "started", "completed", "failed", "skipped")


class Metrics:
    """The metrics every service exports; services add their own to `registry`."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        # The standard process_* (CPU, memory, open files), python_gc_* and python_info
        # series, as the default registry has them.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.consumed = Counter(
            "choreo_messages_consumed",
            "Messages settled, by stream subject and outcome (ack, nack, dlq).",
            ["service", "subject", "outcome"],
            registry=self.registry,
        )
        self.published = Counter(
            "choreo_messages_published",
            "Messages published and acknowledged by JetStream, by subject.",
            ["service", "subject"],
            registry=self.registry,
        )
        self.handler_seconds = Histogram(
            "choreo_handler_seconds",
            "Time spent in a message handler, per call (a call may be a batch).",
            ["service", "handler"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "choreo_batch_size",
            "Messages per handler call.",
            ["service", "handler"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.event_latency = Histogram(
            "choreo_event_latency_seconds",
            "From the envelope's `time` to the moment this service handled the event.",
            ["service", "type"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.retries = Counter(
            "choreo_message_retries",
            "Deliveries that failed and were retried after a backoff (handed back for "
            "redelivery, or processed again in place by a consumer with AckPolicy.ALL).",
            ["service", "subject"],
            registry=self.registry,
        )
        self.consumer_pending = Gauge(
            "choreo_consumer_pending",
            "Messages of a durable consumer not delivered yet (its lag), as of the last "
            "message this instance received from it.",
            ["service", "stream", "consumer"],
            registry=self.registry,
        )
        self.dlq_depth = Gauge(
            "choreo_dlq_depth",
            "Messages this service dead-lettered that are still in the DLQ stream "
            "(dlq.<service>), read at start-up and after each dead-letter.",
            ["service"],
            registry=self.registry,
        )
        self.dlq_depth.labels(service)
        self.workflow_runs = Counter(
            "choreo_workflow_runs",
            "Workflow run events this service published, by state (a replay after a crash "
            "counts again; JetStream drops the duplicate event).",
            ["service", "state"],
            registry=self.registry,
        )
        self.workflow_steps = Counter(
            "choreo_workflow_steps",
            "Workflow step events this service published, by state (replays count again).",
            ["service", "state"],
            registry=self.registry,
        )

    def declare(self, consumed: Iterable[str], published: Iterable[str]) -> None:
        """Start at zero every series known in advance, so that a fresh service's
        dashboard shows 0 rather than "No data" and `increase()` sees the first event:
        the subjects it consumes and publishes (wildcards are known only once a message
        names them) and the workflow states."""
        for subject in consumed:
            if "*" not in subject and ">" not in subject:
                for outcome in get_args(ConsumedOutcome):
                    self.consumed.labels(self.service, subject, outcome)
                self.retries.labels(self.service, subject)
        for subject in published:
            if "*" not in subject and ">" not in subject:
                self.published.labels(self.service, subject)
        for state in RUN_STATES:
            self.workflow_runs.labels(self.service, state)
        for state in STEP_STATES:
            self.workflow_steps.labels(self.service, state)

    def count_consumed(self, subject: str, outcome: ConsumedOutcome, n: int = 1) -> None:
        self.consumed.labels(self.service, subject, outcome).inc(n)

    def count_published(self, subject: str, n: int = 1) -> None:
        self.published.labels(self.service, subject).inc(n)
        tokens = subject.split(".")
        if tokens[:2] == ["wf", "run"] and tokens[-1] in RUN_STATES:
            self.workflow_runs.labels(self.service, tokens[-1]).inc(n)
        elif tokens[:2] == ["wf", "step"] and tokens[-1] in STEP_STATES:
            self.workflow_steps.labels(self.service, tokens[-1]).inc(n)

    def observe_pending(self, msg: Msg) -> None:
        """The consumer's lag as JetStream reported it with `msg` (no extra request)."""
        meta = msg.metadata
        self.consumer_pending.labels(self.service, meta.stream, meta.consumer).set(meta.num_pending)

    def observe_latency(self, event_type: str, event_time: datetime) -> None:
        age = (datetime.now(UTC) - event_time).total_seconds()
        self.event_latency.labels(self.service, event_type).observe(max(age, 0.0))

    def observe_latencies(self, events: Iterable[tuple[str, datetime]]) -> None:
        """`observe_latency` of events settled together: one clock, one lookup per type."""
        now = datetime.now(UTC)
        by_type: dict[str, Histogram] = {}
        for event_type, event_time in events:
            histogram = by_type.get(event_type)
            if histogram is None:
                histogram = by_type[event_type] = self.event_latency.labels(
                    self.service, event_type
                )
            histogram.observe(max((now - event_time).total_seconds(), 0.0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
