"""The transform service: `transform.sql` (DuckDB) and `transform.pathway` (Pathway) steps
over lake objects, and the streaming Pathway pipelines (company_analytics, sales_windows)
in a supervised child process."""

import importlib.util
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from services.transform.pathway.steps import PathwayRunner
from services.transform.settings import TransformSettings
from services.transform.steps import transform_steps
from services.transform.streaming.pipelines import StreamingConfig
from services.transform.streaming.supervisor import StreamingSupervisor
from shared.metrics import Metrics
from shared.s3 import open_s3
from shared.service import ReadinessCheck, Service, build_service, create_broker
from shared.settings import Settings
from shared.slot import Slot
from shared.workflow.runtime import Choreography
from shared.workflow.steps import StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

NAME = "transform"


def create_app(settings: Settings | None = None, *, steps: StepRegistry | None = None) -> Service:
    """`steps` may carry extra step kinds of this service (tests, extensions)."""
    if importlib.util.find_spec("pathway") is None:
        raise RuntimeError(
            "the transform service runs Pathway pipelines, and Pathway is not installed: "
            "pip install 'choreo[pathway]', or run the choreo-transform image"
        )
    settings = TransformSettings.narrow(settings)
    metrics = Metrics(NAME)
    broker = create_broker(settings, NAME)
    client: Slot[S3Client] = Slot("the S3 client")
    steps = steps if steps is not None else StepRegistry(NAME)
    pathway = PathwayRunner(spare=settings.transform_pathway_spare)
    transform_steps(steps, client.get, settings, pathway)

    async def s3_ready() -> None:
        await client.get().list_buckets()

    resources: list[Callable[[], AbstractAsyncContextManager[Any]]] = [
        lambda: open_s3(settings, client),
        pathway.running,
    ]
    checks: dict[str, ReadinessCheck] = {"s3": s3_ready}
    if settings.transform_database_url is not None:
        streaming = StreamingSupervisor(
            StreamingConfig.from_settings(
                settings,
                database_url=settings.transform_database_url.get_secret_value(),
                state_dir=settings.transform_state_dir or settings.data_dir / "transform-state",
            ),
            metrics.registry,
        )
        resources.append(streaming.running)
        checks["streaming"] = streaming.check

    return build_service(
        NAME,
        settings,
        broker,
        metrics,
        resources=resources,
        checks=checks,
        choreography=Choreography.create(NAME, settings, broker, metrics, steps),
        description="Transforms lake data: DuckDB SQL and Pathway pipelines.",
    )
