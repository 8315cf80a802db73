"""The fraud service: scores every payment of stream DATA in real time.

Composition root: `create_app()` builds the settings, the scorer of this replica's partition
(services/fraud/scoring.py), its durable consumer and the workflow side (`fraud.score_batch`,
which reads the lake). The scorer's state is restored (snapshot, then stream replay) before
the consumer starts, so /readyz answers only once scores are right; it is saved on an
interval and on a graceful stop.
"""

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from faststream.nats import NatsBroker, PullSub

from services.fraud.scoring import INPUT, SUBJECTS, FraudScoring
from services.fraud.settings import FraudSettings
from services.fraud.steps import fraud_steps
from shared.consumer import BatchMessage, message_subscription
from shared.fraud_models import ModelStore
from shared.jetstream import jetstream
from shared.metrics import Metrics
from shared.s3 import open_s3
from shared.service import ReadinessCheck, Service, build_service, create_broker
from shared.settings import Settings
from shared.slot import Slot
from shared.subjects import DATA
from shared.workflow.runtime import Choreography
from shared.workflow.steps import StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

NAME = "fraud"
# Unacknowledged deliveries the consumer may have out: chunks in flight plus nak'd ones.
MAX_ACK_PENDING = 20_000


def create_app(settings: Settings | None = None, *, steps: StepRegistry | None = None) -> Service:
    """`steps` may carry extra step kinds of this service (tests, extensions)."""
    config = _fraud_settings(settings)
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
    if config.fraud_scoring_enabled:
        _subscribe(broker, config, scoring)
        resources.append(lambda: scoring.running(lambda: jetstream(broker)))
        checks["state"] = scoring.ready

    return build_service(
        NAME,
        config,
        broker,
        metrics,
        resources=resources,
        checks=checks,
        choreography=choreography,
        description="Scores payments for fraud in real time.",
    )


def _subscribe(broker: NatsBroker, config: FraudSettings, scoring: FraudScoring) -> None:
    """The live scoring: this replica's durable consumer of `data.transaction`."""

    async def on_transactions(msg: BatchMessage) -> None:
        await scoring.receive(msg.raw_message)

    # Chunks of deliveries handled one after another: stream order, which the per-card
    # state needs (a concurrent subscriber could score a card's transactions out of order).
    # The stream holds every `data.*` type, so this is the message subscription of one
    # subject with batches, not shared.consumer.batch_subscription (one-subject streams).
    subscription = message_subscription(INPUT, DATA, scoring.durable, config)
    subscription["config"].filter_subjects = SUBJECTS  # transactions and labels, in order
    subscription["pull_sub"] = PullSub(
        batch_size=config.fraud_fetch_batch, timeout=config.fraud_fetch_wait_s, batch=True
    )
    subscription["config"].max_ack_pending = MAX_ACK_PENDING
    broker.subscriber(
        **subscription,
        title="fraud/transactions",
        description="Scores the transactions of this replica's partition of the cards, in "
        "stream order: fraud.scored always, fraud.alert unless the decision is allow; "
        "learns from the labels (data.fraud_label) of those transactions.",
    )(on_transactions)


def _fraud_settings(settings: Settings | None) -> FraudSettings:
    """The fraud service's own settings: from the environment, or completing the ones given."""
    if settings is None:
        return FraudSettings.load()
    if isinstance(settings, FraudSettings):
        return settings
    return FraudSettings.model_validate(settings.model_dump())
