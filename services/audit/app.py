"""The audit service: every event Choreo carries becomes one row in PostgreSQL.

Composition root: `create_app()` builds the settings, the ports (a real PostgreSQL store
unless a test passes its own), the consumers (services/audit/handlers.py) and the workflow
steps (services/audit/steps.py).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.audit.adapters import PgEventStore, migrate, open_pool
from services.audit.api import audit_router
from services.audit.handlers import AuditHandlers
from services.audit.ports import EventStore
from services.audit.settings import AuditSettings
from services.audit.steps import audit_steps
from shared.metrics import Metrics
from shared.service import Service, build_service, create_broker
from shared.settings import Settings
from shared.slot import Slot
from shared.workflow.runtime import Choreography
from shared.workflow.steps import StepRegistry

NAME = "audit"


def create_app(
    settings: Settings | None = None,
    *,
    store: EventStore | None = None,
    steps: StepRegistry | None = None,
) -> Service:
    """`store` replaces PostgreSQL; `steps` may carry extra step kinds (tests)."""
    config = AuditSettings.narrow(settings)
    metrics = Metrics(NAME)
    broker = create_broker(config, NAME)
    event_store: Slot[EventStore] = Slot("the event store", store)
    steps = steps if steps is not None else StepRegistry(NAME)
    choreography = Choreography.create(NAME, config, broker, metrics, steps)
    audit_steps(steps, event_store.get, choreography.publisher)
    handlers = AuditHandlers(event_store.get, choreography.settler, metrics)

    @asynccontextmanager
    async def database() -> AsyncIterator[None]:
        async with open_pool(config.database_dsn()) as pool:
            await migrate(pool)
            event_store.set(PgEventStore(pool))
            yield

    async def database_ready() -> None:
        await event_store.get().ping()

    return build_service(
        NAME,
        config,
        broker,
        metrics,
        resources=[] if store is not None else [database],
        consumers=handlers.consumers(config),
        checks={"postgres": database_ready},
        routers=[audit_router(event_store.get)],
        choreography=choreography,
        description="Records every event, workflow run and step in PostgreSQL.",
    )
