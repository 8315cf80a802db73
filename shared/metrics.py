"""Prometheus metrics of one service, in a registry of its own.

A registry per service instance (not the global one) lets tests build several apps in one
process. Every name is prefixed `choreo_`; docs/metrics.md lists them.
"""

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)

CONSUMED_OUTCOMES = ("ack", "nack", "term", "dlq")


class Metrics:
    """The metrics every service exports; services add their own to `registry`."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.consumed = Counter(
            "choreo_messages_consumed",
            "Messages handled, by stream subject and outcome (ack, nack, term, dlq).",
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

    def count_consumed(self, subject: str, outcome: str, n: int = 1) -> None:
        self.consumed.labels(self.service, subject, outcome).inc(n)

    def count_published(self, subject: str, n: int = 1) -> None:
        self.published.labels(self.service, subject).inc(n)

    def observe_latency(self, event_type: str, event_time: datetime) -> None:
        age = (datetime.now(UTC) - event_time).total_seconds()
        self.event_latency.labels(self.service, event_type).observe(max(age, 0.0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
