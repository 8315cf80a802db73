"""Settings of the fraud service (`CHOREO_FRAUD_*`)."""

from typing import Self

from pydantic import Field, model_validator

from services.fraud.rules import ScoringConfig
from shared.consumer import FETCH_WAIT_S
from shared.settings import Settings


class FraudSettings(Settings):
    # False: a replica that only runs the fraud workflow steps (fraud.score_batch), which
    # may scale freely; live scoring needs one replica per partition (below).
    fraud_scoring_enabled: bool = True
    # Replicas split the cards between them: a replica scores the transactions whose
    # card hashes to its partition (services/fraud/scoring.py). Give every replica the same
    # partition count and a different partition, 0 <= partition < partitions.
    fraud_partitions: int = Field(default=1, ge=1, le=1024)
    fraud_partition: int = Field(default=0, ge=0)
    # How often the scorer's state is saved to the JetStream object store (and on a
    # graceful stop). A restart replays the transactions after the last snapshot, so this
    # bounds the replay, not correctness.
    fraud_snapshot_interval_s: float = Field(default=30.0, gt=0)
    # Deliveries are fetched in chunks of up to this many: what has arrived, at once. With
    # nothing there a fetch waits this long for the first delivery (it returns when one
    # comes: a shorter wait adds no speed, only pull requests while traffic is idle).
    fraud_fetch_batch: int = Field(default=500, ge=1, le=10_000)
    fraud_fetch_wait_s: float = Field(default=FETCH_WAIT_S, gt=0)
    # How often the current choice of models (s3://<curated>/models/fraud/current.json,
    # written by `choreo fraud promote`/`shadow`) is read: a promotion applies within this.
    fraud_model_poll_s: float = Field(default=5.0, gt=0)
    # Decision thresholds on the score: >= review -> review, >= block -> block (the
    # defaults are the shipped model's, chosen on a validation seed: docs/fraud.md).
    fraud_review: float = Field(default=ScoringConfig.review, gt=0, le=1)
    fraud_block: float = Field(default=ScoringConfig.block, gt=0, le=1)
    # A terminal with confirmed frauds reported on at least this many of the last 7 days
    # puts every payment there at review at least (0: never).
    fraud_compromised_terminal_days: int = Field(
        default=ScoringConfig.compromised_terminal_days, ge=0, le=7
    )

    def scoring_config(self) -> ScoringConfig:
        """The scorer's configuration; ValueError when the thresholds are out of order."""
        return ScoringConfig(
            review=self.fraud_review,
            block=self.fraud_block,
            compromised_terminal_days=self.fraud_compromised_terminal_days,
        )

    @model_validator(mode="after")
    def _partition_in_range(self) -> Self:
        if self.fraud_partition >= self.fraud_partitions:
            raise ValueError(
                f"CHOREO_FRAUD_PARTITION ({self.fraud_partition}) must be below "
                f"CHOREO_FRAUD_PARTITIONS ({self.fraud_partitions})"
            )
        self.scoring_config()  # fail at start-up, naming both thresholds
        return self
