"""The ingest service: the entry point of events (HTTP) and of workflow runs."""

from collections.abc import Mapping

from services.ingest.api import events_router
from services.ingest.runs import RunCoordinator
from services.ingest.settings import IngestSettings
from shared.jetstream import EventPublisher
from shared.metrics import Metrics
from shared.service import Service, build_service, create_broker
from shared.workflow.kinds import STEP_KINDS, StepKind
from shared.workflow.runtime import Choreography

NAME = "ingest"


def create_app(
    settings: IngestSettings | None = None, *, kinds: Mapping[str, StepKind] = STEP_KINDS
) -> Service:
    """`kinds`: the step kinds workflows may use (the shipped ones unless extended)."""
    settings = settings or IngestSettings.load()
    metrics = Metrics(NAME)
    broker = create_broker(settings, NAME)
    publisher = EventPublisher(broker, metrics)
    choreography = Choreography.create(NAME, settings, broker, metrics)
    RunCoordinator(choreography, kinds).subscribe(broker, settings)
    return build_service(
        NAME,
        settings,
        broker,
        metrics,
        routers=[events_router(settings, publisher)],
        choreography=choreography,
        title="Choreo ingest",
        description="Validates events and publishes them to JetStream (`data.<type>`).",
    )
