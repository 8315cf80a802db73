"""The store service: owns the lake's buckets (raw, staging, curated) and runs the
`store.put` and `store.promote` steps."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog

from services.store.buckets import ensure_buckets, lake_buckets
from services.store.steps import store_steps
from shared.metrics import Metrics
from shared.s3 import open_s3
from shared.service import Service, build_service, create_broker
from shared.settings import Settings
from shared.slot import Slot
from shared.workflow.runtime import Choreography, StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

NAME = "store"
log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None, *, steps: StepRegistry | None = None) -> Service:
    """`steps` may carry extra step kinds of this service (tests, extensions)."""
    settings = settings or Settings.load()
    metrics = Metrics(NAME)
    broker = create_broker(settings, NAME)
    buckets = list(lake_buckets(settings).values())
    client: Slot[S3Client] = Slot("the S3 client")
    steps = steps if steps is not None else StepRegistry(NAME)
    store_steps(steps, client.get, settings)

    @asynccontextmanager
    async def object_store() -> AsyncIterator[None]:
        async with open_s3(settings, client) as s3:
            created = await ensure_buckets(s3, buckets)
            log.info("lake buckets ready", buckets=buckets, created=created)
            yield

    async def buckets_ready() -> None:
        for bucket in buckets:
            await client.get().head_bucket(Bucket=bucket)

    return build_service(
        NAME,
        settings,
        broker,
        metrics,
        resources=[object_store],
        checks={"s3": buckets_ready},
        choreography=Choreography.create(NAME, settings, broker, metrics, steps),
        description="Owns the medallion lake: raw, staging and curated buckets.",
    )
