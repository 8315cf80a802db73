"""The store service: owns the lake's buckets (raw, staging, curated)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog

from services.store.buckets import ensure_buckets, lake_buckets
from shared.metrics import Metrics
from shared.s3 import s3_client
from shared.service import Service, build_service, create_broker
from shared.settings import Settings

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

NAME = "store"
log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> Service:
    settings = settings or Settings.load()
    metrics = Metrics(NAME)
    broker = create_broker(settings, NAME)
    buckets = list(lake_buckets(settings).values())
    clients: list[S3Client] = []

    @asynccontextmanager
    async def object_store() -> AsyncIterator[None]:
        async with s3_client(settings) as s3:
            created = await ensure_buckets(s3, buckets)
            log.info("lake buckets ready", buckets=buckets, created=created)
            clients.append(s3)
            yield
            clients.clear()

    async def buckets_ready() -> None:
        if not clients:
            raise ConnectionError("the S3 client is not open yet")
        for bucket in buckets:
            await clients[0].head_bucket(Bucket=bucket)

    return build_service(
        NAME,
        settings,
        broker,
        metrics,
        resources=[object_store],
        checks={"s3": buckets_ready},
        description="Owns the medallion lake: raw, staging and curated buckets.",
    )
