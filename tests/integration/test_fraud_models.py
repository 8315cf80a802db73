"""Model versions in the object store: training on what the lake received (transactions and
labels, as the lander writes them) publishes a version the scorer loads."""

import gzip
import uuid
from datetime import datetime

import pytest

from choreo.cli_fraud_models import train_from_lake
from choreo.client import ClientSettings
from choreo.generate import generate
from services.fraud.domain import DAY, Model, Scorer
from services.fraud.feedback import Label
from shared.envelope import Event
from shared.fraud_models import ModelStore
from shared.s3 import s3_client
from tests.conftest import S3Endpoint

pytestmark = pytest.mark.integration


def gz_lines(events: list[Event]) -> bytes:
    return gzip.compress(b"".join(e.to_bytes() + b"\n" for e in events))


async def test_train_from_lake_publishes_a_version_the_scorer_loads(
    s3_endpoint: S3Endpoint, tmp_path: object
) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = ClientSettings(
        environment="test",
        s3_endpoint_url=s3_endpoint.url,
        s3_access_key=s3_endpoint.access_key,
        s3_secret_key=s3_endpoint.secret_key,
        bucket_raw=f"raw-{suffix}",
        bucket_curated=f"curated-{suffix}",
    )
    transactions, truth = generate(3000, seed=21)
    frauds = [lb for lb in truth if lb["is_fraud"]]
    when = {tx["transaction_id"]: datetime.fromisoformat(tx["timestamp"]) for tx in transactions}
    labels = [
        Label(lb["transaction_id"], True, when[lb["transaction_id"]].timestamp() + DAY)
        for lb in frauds
    ]
    tx_events = [Event(type="transaction", source="tests", data=tx) for tx in transactions]
    label_events = [Event(type="fraud_label", source="tests", data=lb.to_data()) for lb in labels]
    async with s3_client(settings) as s3:
        for bucket in (settings.bucket_raw, settings.bucket_curated):
            await s3.create_bucket(Bucket=bucket)
        half = len(tx_events) // 2  # two objects, as the lander would cut them
        objects = {
            "events/transaction/date=2024-01-01/000000000001-000000001500.jsonl.gz": tx_events[
                :half
            ],
            "events/transaction/date=2024-01-02/000000001501-000000003000.jsonl.gz": tx_events[
                half:
            ],
            "events/fraud_label/date=2024-01-09/000000003001-000000003100.jsonl.gz": label_events,
        }
        for key, events in objects.items():
            await s3.put_object(Bucket=settings.bucket_raw, Key=key, Body=gz_lines(events))
        model, uri = await train_from_lake(settings)
        stored = await ModelStore(s3, settings.bucket_curated).read(model.version)
    assert uri == f"s3://{settings.bucket_curated}/models/fraud/{model.version}.json"
    assert Model.from_dict(stored) == model
    training = model.about["training"]
    assert (training["transactions"], training["frauds"]) == (len(transactions), len(frauds))
    assert training["labels"] == len(labels)
    assert Scorer(model=model).score(transactions[0]).model == model.version
