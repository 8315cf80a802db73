"""The fraud service on a real nats-server with users and permissions, as in the stack:
verdicts as events, dead letters, retries, partitions, and a restart after SIGKILL."""

import asyncio
import json
import operator
import os
import signal
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import ObjectNotFoundError

from choreo.cli.fraud_models import _verdicts
from choreo.fraud_compare import agreement
from choreo.generate import generate
from choreo.servers.nats import NatsServer
from choreo.servers.ports import free_port
from choreo.stack import ServiceProcess
from services.fraud.app import NAME, create_app
from services.fraud.domain import Scorer
from services.fraud.feedback import Label, interleave
from services.fraud.model import Model, shipped_model
from services.fraud.scoring import FraudScoring, partition_of
from services.fraud.settings import FraudSettings
from services.fraud.snapshot import (
    REPLAY_BATCH,
    REPLAY_WAIT_S,
    SnapshotStore,
    object_name,
    read_range,
)
from services.fraud.windows import DAY
from shared.consumer import Settler
from shared.envelope import Event, parse_envelope
from shared.fraud_models import ModelStore
from shared.jetstream import EventPublisher, ensure_streams, jetstream
from shared.metrics import Metrics
from shared.pull import Pulled
from shared.s3 import s3_client
from shared.service import create_broker
from shared.settings import Settings
from shared.subjects import DATA, FRAUD, FRAUD_STATE_BUCKET
from tests.conftest import S3Endpoint
from tests.server_support import service_nats_server
from tests.support import serve, settings_env, start_process, stop_process, wait_for
from tests.unit.test_fraud_feedback import compromised_terminal

pytestmark = pytest.mark.integration

FRAUD_PASSWORD = "fraud-password"
Tx = dict[str, Any]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own (no stream, consumer or snapshot of another test),
    with the admin user and the fraud service's user and permissions."""
    with service_nats_server(tmp_path / "nats", "fraud", FRAUD_PASSWORD) as server:
        yield server


def fraud_settings(
    server: NatsServer, s3: S3Endpoint, data_dir: Path, **values: Any
) -> FraudSettings:
    return FraudSettings(
        environment="test",
        data_dir=data_dir,
        nats_url=server.url,
        s3_endpoint_url=s3.url,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        nats_user="fraud",
        nats_password=FRAUD_PASSWORD,
        # Short, so that redeliveries after a crash or a nak come quickly.
        ack_wait_s=2.0,
        retry_backoff_s=(0.1, 0.2),
        max_deliver=3,
        **values,
    )


def as_events(transactions: Sequence[Tx], **extensions: Any) -> list[Event]:
    return [
        Event(
            type="transaction",
            source="tests",
            data=tx,
            id=f"ev-{tx['transaction_id']}",
            **extensions,
        )
        for tx in transactions
    ]


async def publish(js: JetStreamContext, events: Sequence[Event]) -> None:
    """Publish in order (pipelined on one connection), in chunks, each to `data.<type>`."""
    for start in range(0, len(events), 1000):
        chunk = events[start : start + 1000]
        await asyncio.gather(
            *(js.publish(f"data.{e.type}", e.to_bytes(), headers=e.headers()) for e in chunk)
        )


def with_labels(transactions: Sequence[Tx], labels: Sequence[dict[str, Any]]) -> list[Tx | Label]:
    """The transactions in order, each fraud's label reported a day after it, as the
    service would receive them."""
    fraud = {lb["transaction_id"]: True for lb in labels if lb["is_fraud"]}
    timed = ((tx_time(tx), tx["transaction_id"], tx) for tx in transactions)
    return list(interleave(timed, fraud, DAY))


def tx_time(tx: Tx) -> float:
    return datetime.fromisoformat(tx["timestamp"]).timestamp()


def as_stream(items: Sequence[Tx | Label]) -> list[Event]:
    """Transaction and label events, in the order given."""
    return [
        Event(
            type="fraud_label",
            source="tests",
            data=item.to_data(),
            id=f"label-{item.transaction_id}",
        )
        if isinstance(item, Label)
        else as_events([item])[0]
        for item in items
    ]


RETRIES = 'choreo_message_retries_total{service="fraud",subject="data.transaction"}'


def total(metrics: str, series: str) -> float:
    """The sum of the series whose lines start with `series` in a /metrics text."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(series)
    )


def decided(metrics: str) -> float:
    """How many transactions a replica scored (its decisions counter, all decisions)."""
    return total(metrics, "choreo_fraud_decisions_total{")


async def count(js: JetStreamContext, subject: str) -> int:
    info = await js.stream_info(FRAUD.name, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def read(js: JetStreamContext, stream: str, subject: str) -> list[Event]:
    last = (await js.stream_info(stream)).state.last_seq
    return [Event.from_bytes(m.data) async for m in read_range(js, stream, [subject], 1, last)]


def reference(transactions: Sequence[Tx | Label]) -> dict[str, dict[str, Any]]:
    """What an uninterrupted in-process scorer says, by transaction id (learning from the
    labels among them)."""
    scorer = Scorer()
    out = {}
    for tx in transactions:
        if isinstance(tx, Label):
            scorer.learn(tx)
            continue
        s = scorer.score(tx)
        out[tx["transaction_id"]] = {
            "score": s.score,
            "decision": s.decision,
            "reasons": s.reasons,
            "rules": s.features["rules"],
            "model": s.model,
        }
    return out


def verdicts(events: Sequence[Event]) -> dict[str, dict[str, Any]]:
    keys = ("score", "decision", "reasons", "rules", "model")
    out = {}
    for event in events:
        assert isinstance(event.data, dict)
        out[str(event.data["transaction_id"])] = {k: event.data[k] for k in keys}
    return out


def card_history(card: str, terminal: str, n: int = 8) -> list[Tx]:
    """A card's quiet week at one terminal, then a burst of small payments abroad."""
    quiet = [
        {
            "transaction_id": f"{card}-{i}",
            "card_id": card,
            "terminal_id": terminal,
            "amount": 20.0 + i,
            "currency": "EUR",
            "timestamp": f"2024-01-0{i + 1}T12:00:00Z",
            "country": "ES",
        }
        for i in range(n)
    ]
    burst = [
        {
            "transaction_id": f"{card}-burst-{i}",
            "card_id": card,
            "terminal_id": f"{terminal}-abroad",
            "amount": 1.0 + i,
            "currency": "USD",
            "timestamp": f"2024-01-10T03:00:{10 * i:02d}Z",
            "country": "US",
        }
        for i in range(5)
    ]
    return quiet + burst


async def test_every_transaction_is_scored_and_the_risky_ones_alerted(
    nats_server: NatsServer, s3_endpoint: S3Endpoint, admin: NatsClient, tmp_path: Path
) -> None:
    transactions = card_history("card-a", "term-1") + card_history("card-b", "term-2")
    expected = reference(transactions)
    alerted = {t for t, v in expected.items() if v["decision"] != "allow"}
    assert alerted, "the data should have alerts"
    assert len(alerted) < len(expected), "... and allowed transactions"
    events = as_events(transactions[:13], correlationid="corr-a") + as_events(transactions[13:])
    by_id = {e.id: e for e in events}
    js = admin.jetstream()
    async with serve(create_app(fraud_settings(nats_server, s3_endpoint, tmp_path))) as http:
        await publish(js, events)
        await wait_for(lambda: count(js, "fraud.scored"), lambda n: n == len(events))
        await wait_for(lambda: count(js, "fraud.alert"), lambda n: n == len(alerted))
        ready = await http.get("/readyz")
        metrics = (await http.get("/metrics")).text
    scored = await read(js, FRAUD.name, "fraud.scored")
    alerts = await read(js, FRAUD.name, "fraud.alert")
    assert verdicts(scored) == expected
    assert set(verdicts(alerts)) == alerted
    for event in scored + alerts:
        assert isinstance(event.data, dict)
        cause = by_id[str(event.data["transaction_event_id"])]
        assert event.causationid == cause.id
        assert event.correlationid == (cause.correlationid or cause.id)
        assert event.source == "choreo/fraud"
        assert cause.data is not None
        assert isinstance(cause.data, dict)
        assert event.data["transaction_id"] == cause.data["transaction_id"]
        assert event.data["amount"] == cause.data["amount"]
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"nats": "ok", "state": "ok", "s3": "ok"}
    decisions = Counter(v["decision"] for v in expected.values())
    for decision, n in decisions.items():
        line = f'choreo_fraud_decisions_total{{decision="{decision}",service="fraud"}} {n}.0'
        assert line in metrics


async def test_labels_over_nats_reach_a_consumer_created_before_labels_existed(
    nats_server: NatsServer, s3_endpoint: S3Endpoint, admin: NatsClient, tmp_path: Path
) -> None:
    """An upgrade: the durable filters data.transaction only. The service re-creates it
    from its ack floor over the labels too, and every transaction gets the verdict of a
    scorer that learnt from the labels reported before it."""
    transactions, labels = generate(3_000, seed=8)
    stream = with_labels(transactions, labels)
    js = admin.jetstream()
    await js.add_consumer(
        DATA.name,
        ConsumerConfig(
            durable_name="fraud-p0-of-1",
            filter_subject="data.transaction",
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    async with serve(create_app(fraud_settings(nats_server, s3_endpoint, tmp_path))) as http:
        await publish(js, as_stream(stream))
        await wait_for(lambda: count(js, "fraud.scored"), lambda n: n == len(transactions))
        metrics = (await http.get("/metrics")).text
    info = await js.consumer_info(DATA.name, "fraud-p0-of-1")
    assert sorted(info.config.filter_subjects or []) == ["data.fraud_label", "data.transaction"]
    expected = reference(stream)
    assert verdicts(await read(js, FRAUD.name, "fraud.scored")) == expected
    frauds = sum(isinstance(item, Label) for item in stream)
    assert frauds > 10
    assert f'choreo_fraud_labels_total{{outcome="applied",service="fraud"}} {frauds}.0' in metrics
    assert expected != reference(transactions), "the labels should change some verdicts"


async def test_a_terminal_with_confirmed_frauds_is_flagged_for_its_next_transactions(
    nats_server: NatsServer, s3_endpoint: S3Endpoint, admin: NatsClient, tmp_path: Path
) -> None:
    """The shipped model, in the service: a week of one stolen card a day at "shop", each
    confirmed by a label over NATS a day later, and the three payments after it there are
    flagged; at "quiet", the same week without labels, they are allowed."""
    stream = compromised_terminal("shop", labelled=True)
    stream += [
        item
        for item in compromised_terminal("quiet", labelled=False)
        if isinstance(item, dict) and item["card_id"].startswith("quiet")
    ]
    stream.sort(key=lambda item: item.reported_at if isinstance(item, Label) else tx_time(item))
    js = admin.jetstream()
    async with serve(create_app(fraud_settings(nats_server, s3_endpoint, tmp_path))):
        await publish(js, as_stream(stream))
        payments = sum(not isinstance(item, Label) for item in stream)
        await wait_for(lambda: count(js, "fraud.scored"), lambda n: n == payments)
    scored = {
        str(e.data["transaction_id"]): e.data
        for e in await read(js, FRAUD.name, "fraud.scored")
        if isinstance(e.data, dict)
    }
    for k in range(3):
        assert scored[f"shop-next-{k}"]["decision"] in {"review", "block"}, scored[f"shop-next-{k}"]
        assert scored[f"quiet-next-{k}"]["decision"] == "allow"
        assert scored[f"shop-next-{k}"]["model"] == shipped_model().version


def variant(version: str, shift: float) -> dict[str, Any]:
    """The shipped model with its intercept moved: another version that scores differently."""
    doc = shipped_model().to_dict()
    return {**doc, "version": version, "intercept": doc["intercept"] + shift}


async def test_promote_switches_models_under_load_without_a_restart(
    nats_server: NatsServer, s3_endpoint: S3Endpoint, admin: NatsClient, tmp_path: Path
) -> None:
    """Transactions keep arriving while a new version is promoted, then another put in
    shadow: each transaction is scored once, the switch happens once in stream order, the
    state carries on (the verdicts are those of one scorer whose model changed at that
    transaction), and the shadow's verdicts are recorded but never alert."""
    bucket = f"curated-{uuid.uuid4().hex[:8]}"
    settings = fraud_settings(
        nats_server, s3_endpoint, tmp_path, bucket_curated=bucket, fraud_model_poll_s=0.1
    )
    transactions, _ = generate(6_000, seed=11)
    js = admin.jetstream()
    async with s3_client(settings) as s3:
        await s3.create_bucket(Bucket=bucket)
        store = ModelStore(s3, bucket)
        await store.publish("fraud-test-b", variant("fraud-test-b", 1.5))
        await store.publish("fraud-test-c", variant("fraud-test-c", -1.0))
        async with serve(create_app(settings)):
            for part, (size, choice) in enumerate(
                [(2000, ("fraud-test-b", None)), (2000, ("fraud-test-b", "fraud-test-c"))]
            ):
                chunk = transactions[part * size : (part + 1) * size]
                sending = asyncio.create_task(publish(js, as_events(chunk)))
                await wait_for(
                    lambda: count(js, "fraud.scored"),
                    partial(operator.le, part * size + 300),
                    within=120,
                )
                await store.choose(*choice)  # while transactions are being scored
                await sending
            await publish(js, as_events(transactions[4000:]))
            await wait_for(
                lambda: count(js, "fraud.scored"), lambda n: n == len(transactions), within=120
            )
            await wait_for(lambda: count(js, "fraud.shadow"), bool, within=60)
    scored = await read(js, FRAUD.name, "fraud.scored")
    order = [str(tx["transaction_id"]) for tx in transactions]
    by_id = verdicts(scored)
    assert len(scored) == len(by_id) == len(transactions)  # none twice, none skipped
    models = [by_id[tx_id]["model"] for tx_id in order]
    switch = models.index("fraud-test-b")
    assert 0 < switch < 2000
    assert set(models[:switch]) == {shipped_model().version}
    assert set(models[switch:]) == {"fraud-test-b"}
    # One scorer, its model swapped at that transaction: the state was never reset.
    scorer = Scorer()
    for i, tx in enumerate(transactions):
        if i == switch:
            scorer.model = Model.from_dict(variant("fraud-test-b", 1.5))
        s = scorer.score(tx)
        assert [s.score, s.model] == [by_id[tx["transaction_id"]][k] for k in ("score", "model")]
    shadows = verdicts(await read(js, FRAUD.name, "fraud.shadow"))
    assert {v["model"] for v in shadows.values()} == {"fraud-test-c"}
    assert set(shadows) <= set(order[2000:])
    alerts = verdicts(await read(js, FRAUD.name, "fraud.alert"))
    assert {v["model"] for v in alerts.values()} <= {shipped_model().version, "fraud-test-b"}
    # What `choreo fraud compare` reads and reports.
    compared = agreement(await _verdicts(js, "fraud.scored"), await _verdicts(js, "fraud.shadow"))
    assert compared["pairs"] == len(shadows)
    assert compared["models"] == ["fraud-test-b vs fraud-test-c"]
    assert compared["flagged"]["active_only"] > 0  # c's intercept is lower: it flags less


async def test_a_steps_only_replica_scores_nothing_live(
    nats_server: NatsServer, s3_endpoint: S3Endpoint, admin: NatsClient, tmp_path: Path
) -> None:
    """CHOREO_FRAUD_SCORING_ENABLED=false: the replica runs workflow steps only (it may
    scale freely), with no consumer of data.transaction and no state to restore."""
    js = admin.jetstream()
    settings = fraud_settings(nats_server, s3_endpoint, tmp_path, fraud_scoring_enabled=False)
    async with serve(create_app(settings)) as http:
        await publish(js, as_events(card_history("card-s", "term-9", n=3)))
        ready = await http.get("/readyz")
        await asyncio.sleep(0.5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"nats": "ok", "s3": "ok"}
    assert [c.name for c in await js.consumers_info(DATA.name)] == []
    assert await count(js, "fraud.scored") == 0


async def test_a_transaction_that_cannot_be_scored_is_dead_lettered(
    nats_server: NatsServer, s3_endpoint: S3Endpoint, admin: NatsClient, tmp_path: Path
) -> None:
    good = card_history("card-c", "term-3", n=2)[:2]
    negative = {**good[0], "transaction_id": "neg", "amount": -5}
    no_card = {k: v for k, v in good[0].items() if k != "card_id"} | {"transaction_id": "nocard"}
    events = as_events([good[0], negative, no_card, good[1]])
    js = admin.jetstream()
    async with serve(create_app(fraud_settings(nats_server, s3_endpoint, tmp_path))):
        await publish(js, events[:3])
        garbage = await js.publish("data.transaction", b"not an event")
        await publish(js, events[3:])
        await wait_for(lambda: count(js, "fraud.scored"), lambda n: n == 2)
        await wait_for(lambda: read(js, "DLQ", "dlq.fraud"), lambda d: len(d) == 3)
    dead = [e.data for e in await read(js, "DLQ", "dlq.fraud")]
    assert all(isinstance(d, dict) for d in dead)
    reasons = {d["stream_seq"]: d["reason"] for d in dead if isinstance(d, dict)}
    assert "amount: must be > 0" in str(reasons[2])
    assert "card_id" in str(reasons[3])
    assert "not a valid event envelope" in str(reasons[garbage.seq])
    assert set(verdicts(await read(js, FRAUD.name, "fraud.scored"))) == {
        good[0]["transaction_id"],
        good[1]["transaction_id"],
    }


async def test_a_failed_publish_is_retried_with_the_verdict_it_had(
    nats_server: NatsServer, s3_endpoint: S3Endpoint, admin: NatsClient, tmp_path: Path
) -> None:
    """With stream FRAUD gone, every publish fails: the chunk's deliveries are retried in
    place with the backoff, not scored again; once FRAUD is back each gets its original
    verdict, and no transaction is scored twice."""
    transactions = card_history("card-d", "term-4")
    js = admin.jetstream()
    async with serve(create_app(fraud_settings(nats_server, s3_endpoint, tmp_path))) as http:
        await js.delete_stream(FRAUD.name)
        await publish(js, as_events(transactions))

        async def metrics() -> str:
            return (await http.get("/metrics")).text

        await wait_for(metrics, lambda text: total(text, RETRIES) > 0)
        await ensure_streams(js, Settings(environment="test"), [FRAUD])
        await wait_for(lambda: count(js, "fraud.scored"), lambda n: n == len(transactions))
        text = await metrics()
    assert verdicts(await read(js, FRAUD.name, "fraud.scored")) == reference(transactions)
    assert decided(text) == len(transactions)


async def test_a_publish_refused_mid_chunk_is_scored_once_when_redelivered(
    nats_server: NatsServer, s3_endpoint: S3Endpoint, admin: NatsClient, tmp_path: Path
) -> None:
    """Stream FRAUD stops storing `fraud.alert` (its subjects narrowed) while one fetched
    chunk holds allowed transactions, alerting ones, then allowed ones again: the first
    alerting transaction's publish fails in the middle of the chunk. The deliveries before
    it are acknowledged (one ack, AckPolicy.ALL), none from it on, though the allowed ones
    after it were published: an ack of one of them would settle the failed one too. The
    service stops while retrying; started again once FRAUD stores alerts, it gets those
    deliveries again and publishes the verdicts they had (fraud.scored again: a duplicate
    JetStream drops): no transaction scored twice or skipped."""
    transactions = card_history("card-a", "term-1") + card_history("card-b", "term-2")
    expected = reference(transactions)
    order = [str(tx["transaction_id"]) for tx in transactions]
    alerting = [i for i, tx_id in enumerate(order) if expected[tx_id]["decision"] != "allow"]
    first = alerting[0]
    assert first > 0, "allowed transactions before the first alert"
    assert set(range(first, len(order))) - set(alerting), "allowed ones after it"
    js = admin.jetstream()
    durable = "fraud-p0-of-1"
    settings = fraud_settings(nats_server, s3_endpoint, tmp_path, fraud_fetch_batch=100)
    async with serve(create_app(settings)) as http:
        config = (await js.stream_info(FRAUD.name)).config
        await js.update_stream(replace(config, subjects=["fraud.scored", "fraud.shadow"]))
        await js.pause_consumer(DATA.name, durable, "2999-01-01T00:00:00Z")
        await publish(js, as_events(transactions))  # one chunk, once resumed
        await js.resume_consumer(DATA.name, durable)
        # Stream sequences count from 1: the transaction before the first alerting one is
        # at sequence `first`.
        await wait_for(
            lambda: js.consumer_info(DATA.name, durable),
            lambda i: not i.num_pending and i.ack_floor.stream_seq == first,
        )
        await wait_for(lambda: count(js, "fraud.scored"), lambda n: n == len(transactions))
        await asyncio.sleep(0.5)  # retries with a backoff of 0.1 and 0.2 s: several done
        refused = await js.consumer_info(DATA.name, durable)
        before = (await http.get("/metrics")).text
    assert refused.config.ack_policy == AckPolicy.ALL
    assert refused.ack_floor.stream_seq == first
    assert refused.num_ack_pending == len(transactions) - first
    assert decided(before) == len(transactions)
    assert total(before, RETRIES) > 0
    assert await count(js, "fraud.alert") == 0

    await ensure_streams(js, Settings(environment="test"), [FRAUD])
    async with serve(create_app(settings)) as http:
        await wait_for(lambda: count(js, "fraud.alert"), lambda n: n == len(alerting))
        done = await wait_for(
            lambda: js.consumer_info(DATA.name, durable),
            lambda i: not i.num_ack_pending and not i.num_pending,
        )
        after = (await http.get("/metrics")).text
    assert done.ack_floor.stream_seq == len(transactions)
    assert decided(after) == 0  # the redeliveries published the verdicts they had
    scored = await read(js, FRAUD.name, "fraud.scored")
    assert len(scored) == len(transactions)  # each verdict stored once
    assert verdicts(scored) == expected
    assert set(verdicts(await read(js, FRAUD.name, "fraud.alert"))) == {order[i] for i in alerting}


async def test_a_replay_outlasts_a_server_that_stops_answering(
    nats_server: NatsServer, admin: NatsClient
) -> None:
    """The server answers nothing for longer than a replay's fetch waits (SIGSTOPped, as a
    node on a loaded machine or catching up): the replay waits for it and reads every
    message, rather than taking the silence for the end of the stream."""
    transactions, _ = generate(2 * REPLAY_BATCH + 500, seed=8)
    js = admin.jetstream()
    await publish(js, as_events(transactions))
    last = (await js.stream_info(DATA.name)).state.last_seq
    assert nats_server.pid is not None
    read_seqs: list[int] = []
    resumed: list[asyncio.Task[None]] = []

    async def resume() -> None:
        await asyncio.sleep(REPLAY_WAIT_S + 1)
        os.kill(nats_server.pid or 0, signal.SIGCONT)

    try:
        async for msg in read_range(js, DATA.name, ["data.transaction"], 1, last):
            read_seqs.append(msg.metadata.sequence.stream)
            if len(read_seqs) == REPLAY_BATCH:  # the next fetch finds the server stopped
                os.kill(nats_server.pid, signal.SIGSTOP)
                resumed.append(asyncio.create_task(resume()))
    finally:
        os.kill(nats_server.pid, signal.SIGCONT)
    await asyncio.gather(*resumed)
    assert read_seqs == list(range(1, last + 1))


def delivered(messages: Sequence[Msg]) -> list[Pulled]:
    """Fetched messages as the lean consumer (shared/pull.py) hands them over."""
    return [
        Pulled(parse_envelope(m.data), m, m.metadata.stream, m.metadata.sequence.stream, 1)
        for m in messages
    ]


async def never_stopping(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return False


async def test_deliveries_lost_on_the_way_are_scored_before_the_ack_after_them(
    nats_server: NatsServer, s3_endpoint: S3Endpoint, admin: NatsClient, tmp_path: Path
) -> None:
    """JetStream counts a delivery as made once it sent it: with AckPolicy.ALL, the ack of a
    later delivery settles one lost on the way (the client's server killed, a fetch
    dropped) although it was never handled. The scorer sees the gap in the consumer's
    delivery sequence and handles the missed transactions from the stream first, in order:
    every transaction scored once, as an uninterrupted scorer scores it, and nothing left
    to come back."""
    transactions = card_history("card-l", "term-6")
    events = as_events(transactions)
    settings = fraud_settings(nats_server, s3_endpoint, tmp_path)
    metrics = Metrics(NAME)
    broker = create_broker(settings, NAME)
    publisher = EventPublisher(broker, metrics)
    scoring = FraudScoring(
        settings, Settler(NAME, publisher, metrics, settings), publisher, metrics
    )
    admin_js = admin.jetstream()
    await admin_js.add_consumer(DATA.name, scoring.consumer().config())
    await broker.connect()
    try:
        js = jetstream(broker)
        async with scoring.running(lambda: js):
            deliveries = await js.pull_subscribe_bind(scoring.durable, DATA.name)
            await publish(admin_js, events[:3])
            await scoring.receive(delivered(await deliveries.fetch(3)), never_stopping)
            await publish(admin_js, events[3:6])
            await deliveries.fetch(3)  # delivered, never handled
            await publish(admin_js, events[6:])
            after = await deliveries.fetch(len(events) - 6)
            await scoring.receive(delivered(after), never_stopping)
            with pytest.raises(nats.errors.TimeoutError):
                await deliveries.fetch(1, timeout=settings.ack_wait_s * 2)
        info = await admin_js.consumer_info(DATA.name, scoring.durable)
        scored = await read(admin_js, FRAUD.name, "fraud.scored")
    finally:
        await broker.stop()
    assert info.config.ack_policy == AckPolicy.ALL
    assert info.ack_floor.stream_seq == len(events)
    assert info.num_ack_pending == 0
    ids = Counter(str(e.data["transaction_id"]) for e in scored if isinstance(e.data, dict))
    assert sorted(ids.elements()) == sorted(tx["transaction_id"] for tx in transactions)
    assert verdicts(scored) == reference(transactions)


async def test_replicas_split_the_cards_and_score_each_card_in_order(
    nats_server: NatsServer, s3_endpoint: S3Endpoint, admin: NatsClient, tmp_path: Path
) -> None:
    transactions, _ = generate(2000, seed=21)
    parts = {p: [t for t in transactions if partition_of(t["card_id"], 2) == p] for p in (0, 1)}
    assert parts[0]
    assert parts[1]
    js = admin.jetstream()
    replicas = [
        create_app(
            fraud_settings(
                nats_server, s3_endpoint, tmp_path, fraud_partitions=2, fraud_partition=p
            )
        )
        for p in (0, 1)
    ]
    async with serve(replicas[0]) as first, serve(replicas[1]) as second:
        await publish(js, as_events(transactions))
        await wait_for(
            lambda: count(js, "fraud.scored"), lambda n: n == len(transactions), within=60
        )
        metrics = [(await http.get("/metrics")).text for http in (first, second)]
    scored = await read(js, FRAUD.name, "fraud.scored")
    assert len(scored) == len(transactions)
    got = verdicts(scored)
    # Each replica scored its own cards, each card in stream order: exactly what a scorer
    # given only that partition's transactions says.
    assert got == reference(parts[0]) | reference(parts[1])
    for p, text in enumerate(metrics):
        assert decided(text) == len(parts[p])


async def snapshot_exists(js: JetStreamContext) -> bool:
    try:
        store = await js.object_store(FRAUD_STATE_BUCKET)
        await store.get_info(object_name(0, 1))
    except (ObjectNotFoundError, nats.js.errors.BucketNotFoundError):
        return False
    return True


@pytest.mark.parametrize(
    "snapshot_interval_s",
    [3600.0, 0.2],
    ids=["killed-before-a-snapshot", "killed-after-a-snapshot"],
)
async def test_a_killed_service_restarts_with_the_same_scores(
    nats_server: NatsServer,
    s3_endpoint: S3Endpoint,
    admin: NatsClient,
    tmp_path: Path,
    snapshot_interval_s: float,
) -> None:
    """SIGKILL the service mid-stream and start it again: every transaction has exactly one
    fraud.scored, with the score an uninterrupted scorer gives. The restart rebuilds the
    state from the stream alone (no snapshot yet), or from a snapshot plus the rest.
    Confirmed frauds arrive as labels among the transactions: they survive the kill too."""
    transactions, labels = generate(12_000, seed=5)
    stream = with_labels(transactions, labels)
    js = admin.jetstream()
    await publish(js, as_stream(stream))
    expected = reference(stream)
    settings = fraud_settings(
        nats_server,
        s3_endpoint,
        tmp_path,
        fraud_snapshot_interval_s=snapshot_interval_s,
        fraud_fetch_batch=100,
    )
    env = {**os.environ, **settings_env(settings)}

    def fraud_process(log: str) -> ServiceProcess:
        env["CHOREO_HTTP_PORT"] = str(free_port())
        return ServiceProcess("fraud", int(env["CHOREO_HTTP_PORT"]), env, tmp_path / log)

    first = fraud_process("first.log")
    await start_process(first)
    try:
        if snapshot_interval_s < 60:
            await wait_for(lambda: snapshot_exists(js), bool, within=30)
        at_kill = await wait_for(
            lambda: count(js, "fraud.scored"), lambda n: n >= 2000, within=30, interval=0.01
        )
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
    finally:
        await stop_process(first)
    assert first.returncode == -signal.SIGKILL
    assert at_kill < len(transactions), "killed after the backlog was done: nothing was tested"
    assert await snapshot_exists(js) == (snapshot_interval_s < 60)

    second = fraud_process("second.log")
    await start_process(second)
    try:
        await wait_for(
            lambda: count(js, "fraud.scored"), lambda n: n >= len(transactions), within=90
        )
    finally:
        await stop_process(second)
    restarted = (tmp_path / "second.log").read_text()
    scored = await read(js, FRAUD.name, "fraud.scored")
    ids = Counter(str(e.data["transaction_id"]) for e in scored if isinstance(e.data, dict))
    assert [t for t, n in ids.items() if n > 1] == []
    assert len(scored) == len(transactions)
    assert verdicts(scored) == expected
    # The labels made a difference after the kill, so losing them would have shown.
    blind = reference(transactions)
    order = [str(tx["transaction_id"]) for tx in transactions]
    changed = [i for i, tx_id in enumerate(order) if blind[tx_id] != expected[tx_id]]
    assert changed
    assert changed[-1] > at_kill
    logs = [json.loads(line) for line in restarted.splitlines() if line.startswith("{")]
    rebuilt = next(entry for entry in logs if entry.get("event") == "state rebuilt")
    restored = [entry for entry in logs if entry.get("event") == "state restored from snapshot"]
    if snapshot_interval_s < 60:
        assert restored
        assert restored[0]["applied_seq"] > 0
    else:
        assert not restored
        assert rebuilt["replayed"] > 0


async def test_a_large_snapshot_round_trips_with_the_fraud_users_permissions(
    nats_server: NatsServer, s3_endpoint: S3Endpoint, tmp_path: Path
) -> None:
    """Many chunks: the read-back needs flow control, which the fraud user may answer."""
    settings = fraud_settings(nats_server, s3_endpoint, tmp_path)
    client = await nats.connect(settings.nats_url, user="fraud", password=FRAUD_PASSWORD)
    try:
        store = await SnapshotStore.open(client.jetstream(), settings, object_name(0, 1))
        assert await store.load() is None
        data = os.urandom(8 * 1024 * 1024)
        await store.save(data)
        await store.save(data[::-1])  # replaces the object
        assert await asyncio.wait_for(store.load(), 30) == data[::-1]
    finally:
        await client.close()
