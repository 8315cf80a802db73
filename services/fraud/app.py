"""The fraud service: scores every payment of stream DATA in real time.

Composition root: `create_app()` builds the settings, the scorer of this replica's partition
(services/fraud/scoring.py), its durable consumer (shared/pull.py) and the workflow side
(`fraud.score_batch`, which reads the lake). The scorer's state is restored (snapshot, then
stream replay) before the consumer starts, so /readyz answers only once scores are right;
it is saved on an interval and on a graceful stop.
"""

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from services.fraud.scoring import FraudScoring
from services.fraud.settings import FraudSettings
from services.fraud.steps import fraud_steps
from shared.fraud_models import ModelStore
from shared.jetstream import jetstream
from shared.metrics import Metrics
from shared.pull import PullConsumer
from shared.s3 import open_s3
from shared.service import ReadinessCheck, Service, build_service, create_broker
from shared.settings import Settings
from shared.slot import Slot
from shared.workflow.runtime import Choreography
from shared.workflow.steps import StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

NAME = "fraud"


def create_app(settings: Settings | None = None, *, steps: StepRegistry | None = None) -> Service:
    """`steps` may carry extra step kinds of this service (tests, extensions)."""
    config = FraudSettings.narrow(settings)
    metrics = Metrics(NAME)
    broker = create_broker(config, NAME)
    steps = steps if steps is not None else StepRegistry(NAME)
    client: Slot[S3Client] = Slot("the S3 client")
    fraud_steps(steps, client.get, config)  # fraud.score_batch: a lake file, scored
    choreography = Choreography.create(NAME, config, broker, metrics, steps)
    scoring = FraudScoring(
        config,
        choreography.settler,
        choreography.publisher,
        metrics,
        models=lambda: ModelStore(client.get(), config.bucket_curated),
    )

    async def s3_ready() -> None:
        await client.get().list_buckets()

    resources: list[Callable[[], AbstractAsyncContextManager[Any]]] = [
        lambda: open_s3(config, client)
    ]
    checks: dict[str, ReadinessCheck] = {"s3": s3_ready}
    consumers: list[PullConsumer] = []
    if config.fraud_scoring_enabled:
        consumers.append(scoring.consumer())
        resources.append(lambda: scoring.running(lambda: jetstream(broker)))
        checks["state"] = scoring.ready

    return build_service(
        NAME,
        config,
        broker,
        metrics,
        resources=resources,
        consumers=consumers,
        checks=checks,
        choreography=choreography,
        description="Scores payments for fraud in real time.",
    )
