"""Model versions in the object store: training on what the lake received (transactions and
labels, as the lander writes them) publishes a version the scorer loads; and labels sent
with `choreo fraud label` through a running ingest."""

import gzip
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
import pytest

from choreo.cli.fraud_models import train_from_lake
from choreo.client import ClientSettings
from choreo.generate import generate
from services.fraud.domain import Scorer
from services.fraud.feedback import Label
from services.fraud.model import Model
from services.fraud.snapshot import read_range
from services.fraud.windows import DAY
from shared.envelope import Event
from shared.fraud_models import ModelStore
from shared.jetstream import ensure_streams
from shared.s3 import s3_client
from shared.settings import Settings
from shared.subjects import DATA
from tests.conftest import S3Endpoint
from tests.support import CliInThread, printed_json, service_process, wait_for

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


async def test_choreo_fraud_label_sends_a_csv_of_0_and_1_through_ingest(
    settings: Settings, tmp_path: Path
) -> None:
    """`choreo fraud label` against a running ingest: every line becomes a fraud_label
    event in stream DATA; sending the file again adds nothing; a bad line sends nothing."""
    marker = uuid.uuid4().hex[:8]
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "transaction_id,isFraud,reported_at\n"
        f"tx-{marker}-1,1,2024-01-02T10:00:00Z\n"
        f"tx-{marker}-2,0,\n"
        f"tx-{marker}-3,fraud,2024-01-03T10:00:00Z\n"
    )
    client = await nats.connect(settings.nats_url)
    try:
        js = client.jetstream()
        await ensure_streams(js, settings)

        async def received() -> list[dict[str, Any]]:
            found = []
            last = (await js.stream_info(DATA.name)).state.last_seq
            async for msg in read_range(js, DATA.name, ["data.fraud_label"], 1, last):
                data = Event.from_bytes(msg.data).data
                if isinstance(data, dict) and marker in str(data["transaction_id"]):
                    found.append(data)
            return found

        async with service_process("ingest", settings, tmp_path) as url:
            cli = CliInThread(tmp_path, CHOREO_INGEST_URL=url)
            args = ("fraud", "label", str(labels), "--reported-at", "2024-01-05T00:00:00Z")
            first = await cli(*args, "--json")
            assert first.exit_code == 0, first.output
            assert printed_json(first.stdout) == {"accepted": 3, "fraud": 2}
            again = await cli(*args)
            assert again.exit_code == 0, again.output
            bad = tmp_path / "bad.csv"
            bad.write_text(f"transaction_id,is_fraud\ntx-{marker}-4,1\ntx-{marker}-5,maybe\n")
            refused = await cli("fraud", "label", str(bad))
            assert refused.exit_code == 2
            assert "bad.csv:3: is_fraud: need true/false, 0/1 or fraud/legit" in refused.stderr
        found = await wait_for(received, lambda f: len(f) >= 3)
    finally:
        await client.close()
    said = [(d["transaction_id"], d["is_fraud"], d["reported_at"]) for d in found]
    assert sorted(said) == [
        (f"tx-{marker}-1", True, "2024-01-02T10:00:00Z"),
        (f"tx-{marker}-2", False, "2024-01-05T00:00:00Z"),
        (f"tx-{marker}-3", True, "2024-01-03T10:00:00Z"),
    ]
