"""The store service: owns the lake's buckets (raw, staging, curated), lands every event of
stream DATA in the raw bucket (the lake lander), runs the `store.put` and `store.promote`
steps and presigns download URLs. Every object it writes is announced on
`lake.object.written` (stream LAKE)."""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog

from services.store.api import objects_router
from services.store.buckets import ensure_buckets
from services.store.lake import Lake, LakeLander, LakeMetrics
from services.store.lander import FlushPolicy
from services.store.settings import StoreSettings
from services.store.steps import store_steps
from shared.envelope import Event
from shared.lake import layer_buckets
from shared.metrics import Metrics
from shared.s3 import open_s3, s3_client
from shared.service import Service, build_service, create_broker
from shared.settings import Settings
from shared.slot import Slot
from shared.workflow.runtime import Choreography
from shared.workflow.steps import StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

NAME = "store"
log = structlog.get_logger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    steps: StepRegistry | None = None,
    lake: Lake | None = None,
) -> Service:
    """`steps` may carry extra step kinds of this service (tests, extensions); `lake`
    replaces the raw bucket the lander writes to (tests)."""
    config = StoreSettings.narrow(settings)
    metrics = Metrics(NAME)
    broker = create_broker(config, NAME)
    buckets = list(layer_buckets(config).values())
    client: Slot[S3Client] = Slot("the S3 client")
    signer: Slot[S3Client] = Slot("the S3 presigning client")
    steps = steps if steps is not None else StepRegistry(NAME)

    async def announce(event: Event) -> None:
        await choreography.publisher.publish(event.type, event)

    store_steps(steps, client.get, config, announce)
    choreography = Choreography.create(NAME, config, broker, metrics, steps)

    @asynccontextmanager
    async def object_store() -> AsyncIterator[None]:
        async with open_s3(config, client) as s3:
            created = await ensure_buckets(s3, buckets)
            log.info("lake buckets ready", buckets=buckets, created=created)
            if config.store_presign_endpoint_url is None:
                signer.set(s3)
                yield
                return
            public = config.model_copy(
                update={"s3_endpoint_url": config.store_presign_endpoint_url}
            )
            async with s3_client(public) as presigning:  # signs only: it never connects
                signer.set(presigning)
                yield

    async def buckets_ready() -> None:
        for bucket in buckets:
            await client.get().head_bucket(Bucket=bucket)

    resources: list[Callable[[], AbstractAsyncContextManager[Any]]] = [object_store]
    consumers = []
    if config.lander_enabled:
        lander = LakeLander(
            choreography.settler,
            config,
            lake or Lake(client.get, config.bucket_raw),
            FlushPolicy(config.lander_max_events, config.lander_max_bytes, config.lander_max_age_s),
            LakeMetrics(metrics.registry),
            announce,
        )
        consumers.append(lander.consumer)  # stops before the resources close
        resources.append(lander.running)  # after the S3 client: it closes first

    return build_service(
        NAME,
        config,
        broker,
        metrics,
        resources=resources,
        consumers=consumers,
        checks={"s3": buckets_ready},
        routers=[objects_router(client.get, signer.get)],
        choreography=choreography,
        description="Owns the medallion lake: raw, staging and curated buckets, and lands "
        "every event in the raw bucket.",
    )
