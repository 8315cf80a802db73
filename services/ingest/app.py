"""The ingest service: the entry point of events (HTTP and `data.in.<type>`), validated
against the schema registry, of workflow runs (also those schedules fire), and of source
extraction steps."""

from collections.abc import Mapping
from typing import TYPE_CHECKING

from services.ingest.admission import Admission
from services.ingest.api import AdmissionGate, events_router, schemas_router
from services.ingest.dlq_api import DeadLetterApi
from services.ingest.inbound import InboundEvents
from services.ingest.registry import SchemaRegistry, load_registry
from services.ingest.runs_api import api_key_guard, runs_router
from services.ingest.schedules import ScheduleFires
from services.ingest.settings import IngestSettings
from services.ingest.steps import ingest_steps
from services.ingest.triggers import Triggers
from shared.jetstream import jetstream
from shared.metrics import Metrics
from shared.s3 import open_s3
from shared.service import Service, build_service, create_broker
from shared.settings import Settings
from shared.slot import Slot
from shared.workflow.kinds import STEP_KINDS, StepKind
from shared.workflow.lifecycle import RunLifecycle
from shared.workflow.plugins import plugin_step
from shared.workflow.runtime import Choreography
from shared.workflow.steps import StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

NAME = "ingest"


def create_app(
    settings: Settings | None = None,
    *,
    kinds: Mapping[str, StepKind] = STEP_KINDS,
    steps: StepRegistry | None = None,
    registry: SchemaRegistry | None = None,
    triggers: bool = True,
) -> Service:
    """`kinds`: the step kinds workflows may use (the shipped ones unless extended);
    `steps`: extra step kinds of this service; `registry`: the event schemas (by default
    the shipped ones plus CHOREO_INGEST_SCHEMA_DIR's); `triggers`: whether events and lake
    objects start the runs deployed workflows' `on` asks for (off only in handler tests,
    whose in-memory messages carry no JetStream metadata)."""
    settings = IngestSettings.narrow(settings)
    registry = registry or load_registry(settings.ingest_schema_dir)
    metrics = Metrics(NAME)
    broker = create_broker(settings, NAME)
    client: Slot[S3Client] = Slot("the S3 client")
    steps = steps if steps is not None else StepRegistry(NAME)
    ingest_steps(steps, client.get, settings)
    choreography = Choreography.create(NAME, settings, broker, metrics, steps)
    # The kinds routed here that ingest does not implement are HTTP plugins.
    steps.fallback = plugin_step(lambda uses: choreography.registry.kind(uses))
    fires = ScheduleFires(choreography, metrics)
    slots = RunLifecycle(choreography, kinds, slots=lambda: fires.deployments.get().kv)
    slots.subscribe(broker, settings)
    fires.subscribe(broker, settings)
    dead_letters = DeadLetterApi(settings, metrics)
    trigger_consumers = (
        Triggers(choreography, metrics, fires.deployments).consumers(settings) if triggers else []
    )
    admission = Admission(
        metrics,
        min_in_flight=settings.ingest_min_in_flight,
        max_in_flight=settings.ingest_max_in_flight,
        target_latency_s=settings.ingest_target_latency_s,
        max_loop_lag_s=settings.ingest_max_loop_lag_s,
    )
    InboundEvents(registry, choreography.publisher, choreography.settler, admission).subscribe(
        broker, settings
    )
    # No S3 readiness check on purpose: events (the main job) need only NATS, and a step
    # that finds S3 down fails and is retried; ingest's key may not list buckets anyway.
    service = build_service(
        NAME,
        settings,
        broker,
        metrics,
        resources=[lambda: open_s3(settings, client), admission.measuring_the_loop],
        consumers=trigger_consumers,
        routers=[
            events_router(settings, choreography.publisher, registry, admission),
            schemas_router(registry),
            runs_router(settings, choreography, fires, lambda: jetstream(broker), kinds),
            dead_letters.router(lambda: jetstream(broker), api_key_guard(settings)),
        ],
        on_ready=[fires.open, dead_letters.open],
        choreography=choreography,
        title="Choreo ingest",
        description="Validates events against the schema registry and publishes them to "
        "JetStream (`data.<type>`); starts, cancels and retries workflow runs (`/v1/runs`); "
        "runs the source extraction steps (`ingest.*`).",
        # uvloop (libuv) accepts one connection per loop iteration
        # (https://github.com/libuv/libuv/pull/3696): when a burst of clients connects to a
        # busy ingest, 25 ms iterations accepted 40 connections a second and requests
        # waited seconds to be read, refusals included. asyncio's loop accepts every
        # pending connection at once.
        http_loop="asyncio",
    )
    service.http.add_middleware(AdmissionGate, admission=admission, settings=settings)
    return service
