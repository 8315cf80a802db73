"""The ingest service: the entry point of events into Choreo (HTTP now, NATS later)."""

from services.ingest.api import events_router
from services.ingest.settings import IngestSettings
from shared.jetstream import EventPublisher
from shared.metrics import Metrics
from shared.service import Service, build_service, create_broker

NAME = "ingest"


def create_app(settings: IngestSettings | None = None) -> Service:
    settings = settings or IngestSettings.load()
    metrics = Metrics(NAME)
    broker = create_broker(settings, NAME)
    publisher = EventPublisher(broker, metrics)
    return build_service(
        NAME,
        settings,
        broker,
        metrics,
        routers=[events_router(settings, publisher)],
        title="Choreo ingest",
        description="Validates events and publishes them to JetStream (`data.<type>`).",
    )
