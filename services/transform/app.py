"""The transform service: `transform.sql` (DuckDB) and `transform.pathway` steps over
lake objects."""

from typing import TYPE_CHECKING

from services.transform.steps import transform_steps
from shared.metrics import Metrics
from shared.s3 import open_s3
from shared.service import Service, build_service, create_broker
from shared.settings import Settings
from shared.slot import Slot
from shared.workflow.runtime import Choreography, StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

NAME = "transform"


def create_app(settings: Settings | None = None, *, steps: StepRegistry | None = None) -> Service:
    """`steps` may carry extra step kinds of this service (tests, extensions)."""
    settings = settings or Settings.load()
    metrics = Metrics(NAME)
    broker = create_broker(settings, NAME)
    client: Slot[S3Client] = Slot("the S3 client")
    steps = steps if steps is not None else StepRegistry(NAME)
    transform_steps(steps, client.get, settings)

    async def s3_ready() -> None:
        await client.get().list_buckets()

    return build_service(
        NAME,
        settings,
        broker,
        metrics,
        resources=[lambda: open_s3(settings, client)],
        checks={"s3": s3_ready},
        choreography=Choreography.create(NAME, settings, broker, metrics, steps),
        description="Transforms lake data: DuckDB SQL and Pathway pipelines.",
    )
