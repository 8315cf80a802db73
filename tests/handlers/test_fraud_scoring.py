"""The fraud consumer's pure parts: partitions, the events it publishes, its settings and
the snapshot format (exact, versioned, one partition's)."""

import asyncio
import copy
import uuid
import zlib
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from choreo.generate import generate
from services.fraud.domain import Scorer
from services.fraud.model import Model, shipped_model
from services.fraud.records import Transaction
from services.fraud.scoring import EVENT_IDS, SOURCE, _verdict, fraud_events, partition_of
from services.fraud.settings import FraudSettings
from services.fraud.snapshot import (
    Outcome,
    Snapshot,
    SnapshotError,
    Verdict,
    decode,
    encode,
    encode_detached,
    object_name,
)
from shared.envelope import Event, parse_envelope, rfc3339
from shared.fraud import FraudVerdict
from shared.subjects import FRAUD_ALERT, FRAUD_SCORED, FRAUD_SHADOW
from shared.tracing import trace_id
from tests.samples import TRANSACTION, changed

TX = changed(TRANSACTION, country="ES")


def test_partition_of_is_crc32_of_the_card() -> None:
    assert partition_of("card-1", 1) == 0
    assert partition_of("card-1", 7) == zlib.crc32(b"card-1") % 7
    cards = [f"card-{i}" for i in range(1000)]
    spread = Counter(partition_of(c, 4) for c in cards)
    assert set(spread) == {0, 1, 2, 3}
    assert min(spread.values()) > 150  # roughly even


@pytest.mark.parametrize(
    ("decision", "subjects"),
    [
        ("allow", [FRAUD_SCORED]),
        ("review", [FRAUD_SCORED, FRAUD_ALERT]),
        ("block", [FRAUD_SCORED, FRAUD_ALERT]),
    ],
)
def test_fraud_events_derive_from_the_transaction(decision: str, subjects: list[str]) -> None:
    transaction = Event(type="transaction", source="tests", data=TX, correlationid="corr-9")
    verdict = Verdict(0.9, decision, ["velocity_1m: 4 transactions"], {"velocity_1m": 0.65}, "m1")
    events = built(transaction, verdict)
    assert [subject for subject, _ in events] == subjects
    for subject, event in events:
        assert event.type == subject
        assert event.source == "choreo/fraud"
        assert event.causationid == transaction.id
        assert event.correlationid == "corr-9"
        assert event.subject == "tx-1"
        kind = subject.split(".")[1]
        assert event.id == str(uuid.uuid5(EVENT_IDS, f"{transaction.id}:{kind}"))
        assert event.data == {
            "transaction_id": "tx-1",
            "transaction_event_id": transaction.id,
            "card_id": "card-1",
            "terminal_id": "term-1",
            "amount": 12.5,
            "currency": "EUR",
            "timestamp": "2024-01-15T10:01:00Z",
            "score": 0.9,
            "decision": decision,
            "reasons": ["velocity_1m: 4 transactions"],
            "rules": {"velocity_1m": 0.65},
            "model": "m1",
        }
    # The same transaction event always gives the same ids: a re-publish is a duplicate.
    assert [e.id for _, e in built(transaction, verdict)] == [e.id for _, e in events]


def built(transaction: Event, verdict: Verdict) -> list[tuple[str, Event]]:
    """fraud_events() of `transaction` as it arrives (bytes), read back as events."""
    envelope = parse_envelope(transaction.to_bytes())
    events = fraud_events(envelope, Transaction.parse(envelope["data"]), verdict)
    for encoded in events:
        assert Event.from_bytes(encoded.payload).id == encoded.id  # the de-duplication id
    return [(e.subject, Event.from_bytes(e.payload)) for e in events]


class TransactionModel(BaseModel):
    """The fields FraudVerdict repeats, as fraud_events read them with pydantic."""

    transaction_id: str
    card_id: str
    terminal_id: str
    amount: float
    currency: str
    timestamp: str


def model_built(transaction: Event, verdict: Verdict, kind: str, time: datetime, tp: str) -> bytes:
    """What fraud_events() gave when it built models: Event.child() with a FraudVerdict as
    its data, serialized by Event.to_bytes(); with the time and traceparent given (a clock
    reading and a random span id, new on every call)."""
    tx = TransactionModel.model_validate(transaction.data)
    v = verdict.shadow if kind == FRAUD_SHADOW else verdict
    assert v is not None
    data = FraudVerdict(
        transaction_event_id=transaction.id,
        score=v.score,
        decision=v.decision,
        reasons=v.reasons,
        rules=v.rules,
        model=v.model,
        **tx.model_dump(),
    ).model_dump(mode="json")
    child = transaction.child(
        type=kind,
        source=SOURCE,
        id=str(uuid.uuid5(EVENT_IDS, f"{transaction.id}:{kind.rsplit('.', 1)[1]}")),
        subject=tx.transaction_id,
        data=data,
        time=time,
        traceparent=tp,
    )
    return child.to_bytes()


def test_fraud_events_are_byte_for_byte_what_event_child_gave() -> None:
    """The events built as dicts and serialized by orjson are the bytes the models gave,
    for real verdicts (rules, reasons, shadows) of generated transactions, in envelopes
    with and without extensions, timestamps and amounts spelled otherwise. Only the time
    and the span id are new on every call: those are compared apart."""
    transactions, _ = generate(400, seed=4)
    scorer = Scorer()
    candidate = Model.from_dict({**shipped_model().to_dict(), "version": "c", "intercept": 1.0})
    spellings = ["+00:00", ".250+01:00", ".000001-05:30", ".000Z"]
    compared: Counter[str] = Counter()
    for n, tx in enumerate(transactions):
        data = dict(tx)
        if n % 5 == 1:
            data["timestamp"] = tx["timestamp"].replace("Z", spellings[n % 4])
        if n % 7 == 0:
            data["amount"] = int(data["amount"]) + 1  # an integer: FraudVerdict's is a float
        extensions: dict[str, Any] = (
            {"runid": "run-1", "stepid": "score", "attempt": 2, "correlationid": f"c-{n}"}
            if n % 2
            else {"traceparent": None}
        )
        transaction = Event(type="transaction", source="tests", data=data, **extensions)
        verdict = _verdict(scorer.score(data, candidate if n % 3 == 0 else None))
        envelope = parse_envelope(transaction.to_bytes())
        started = datetime.now(UTC)
        for encoded in fraud_events(envelope, Transaction.parse(envelope["data"]), verdict):
            event = Event.from_bytes(encoded.payload)
            assert event.traceparent is not None
            old = model_built(transaction, verdict, encoded.subject, event.time, event.traceparent)
            assert encoded.payload == old
            assert rfc3339(event.time) in old.decode()  # the time as the model writes it
            assert started <= event.time <= datetime.now(UTC)
            if transaction.traceparent is not None:
                assert trace_id(event.traceparent) == trace_id(transaction.traceparent)
            compared[encoded.subject] += 1
    assert compared[FRAUD_SCORED] == len(transactions)
    assert compared[FRAUD_ALERT] > 0
    assert compared[FRAUD_SHADOW] > 0


def test_a_shadow_verdict_is_recorded_never_alerting() -> None:
    transaction = Event(type="transaction", source="tests", data=TX)
    shadow = Verdict(0.95, "block", ["velocity_1m: 4 transactions"], {"velocity_1m": 0.65}, "s")
    events = built(transaction, Verdict(0.1, "allow", [], {}, "m1", shadow))
    assert [subject for subject, _ in events] == [FRAUD_SCORED, FRAUD_SHADOW]
    scored, shadowed = (e.data for _, e in events)
    assert isinstance(scored, dict)
    assert isinstance(shadowed, dict)
    assert (scored["model"], scored["decision"]) == ("m1", "allow")
    assert (shadowed["model"], shadowed["decision"], shadowed["score"]) == ("s", "block", 0.95)
    assert events[1][1].id == str(uuid.uuid5(EVENT_IDS, f"{transaction.id}:shadow"))


def test_a_shadow_model_judges_the_same_features() -> None:
    transactions, _ = generate(500, seed=3)
    base = shipped_model().to_dict()
    shifted = {**base, "version": "candidate", "intercept": base["intercept"] + 2}
    candidate = Model.from_dict(shifted)
    plain, shadowed = Scorer(), Scorer()
    for tx in transactions:
        alone, both = plain.score(tx), shadowed.score(tx, candidate)
        assert both.shadow is not None
        assert alone == replace(both, shadow=None)  # the active verdict does not change
        assert both.shadow.model == "candidate"
        assert both.shadow.features["inputs"] == both.features["inputs"]
        assert both.shadow.score > both.score
    assert plain.state == shadowed.state


def test_settings_refuse_a_partition_outside_the_count() -> None:
    with pytest.raises(ValidationError, match="CHOREO_FRAUD_PARTITION"):
        FraudSettings(fraud_partitions=2, fraud_partition=2)
    assert FraudSettings(fraud_partitions=2, fraud_partition=1).fraud_partition == 1


def scored_state(n: int, seed: int) -> tuple[Scorer, list[dict[str, object]]]:
    """A scorer that has seen the first half of a generated set, and the second half."""
    transactions, _ = generate(n, seed)
    scorer = Scorer()
    half = n // 2
    for tx in transactions[:half]:
        scorer.score(tx)
    return scorer, transactions[half:]


def test_a_snapshot_restores_the_state_exactly() -> None:
    """Scoring on from a decoded snapshot gives the very same verdicts as not stopping."""
    scorer, rest = scored_state(3000, seed=11)
    pending = {
        7: Outcome(Verdict(0.1 + 0.2, "allow", [], {}, "m")),
        8: Outcome(Verdict(0.5, "review", ["r"], {}, "m", Verdict(0.2, "allow", [], {}, "s"))),
        9: Outcome(None, "transaction cannot be scored: amount: must be > 0, got -1.0"),
    }
    raw = encode(Snapshot(2, 3, 1234, scorer.state, pending))
    assert encode(Snapshot(2, 3, 1234, copy.deepcopy(scorer.state), pending)) == raw
    loaded = decode(raw, 2, 3)
    assert (loaded.partition, loaded.partitions, loaded.applied_seq) == (2, 3, 1234)
    assert loaded.pending == pending
    assert loaded.state == scorer.state
    card = next(iter(scorer.state.cards))
    amounts = loaded.state.cards[card].amounts
    assert amounts.maxlen == scorer.state.cards[card].amounts.maxlen
    restored = Scorer()
    restored.state = loaded.state
    for tx in rest:
        assert restored.score(tx) == scorer.score(tx)


async def test_a_detached_snapshot_is_the_state_at_the_fork() -> None:
    """Encoded in a forked child: the same bytes as encoding in place, even though the
    state changes (scoring goes on) while the child encodes."""
    scorer, rest = scored_state(3000, seed=12)
    snapshot = Snapshot(0, 1, 99, scorer.state, {})
    expected = encode(Snapshot(0, 1, 99, copy.deepcopy(scorer.state), {}))
    detached = asyncio.create_task(encode_detached(snapshot))
    await asyncio.sleep(0)  # the fork happens here, before the state changes below
    for tx in rest[:200]:
        scorer.score(tx)
    assert await detached == expected
    assert encode(snapshot) != expected  # the live state did move on


def test_a_snapshot_is_standard_json_with_exact_floats() -> None:
    scorer = Scorer()
    scorer.score(TX)
    raw = encode(
        Snapshot(0, 1, 1, scorer.state, {1: Outcome(Verdict(1 / 3, "allow", [], {}, "m"))})
    )
    assert b"Infinity" not in raw
    assert b"NaN" not in raw
    verdict = decode(raw, 0, 1).pending[1].verdict
    assert verdict is not None
    assert verdict.score == 1 / 3


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"{not json", "not JSON"),
        (b'{"format": "other"}', "format"),
        (b'{"format": "choreo.fraud.snapshot", "version": 99}', "version 99"),
        (
            b'{"format": "choreo.fraud.snapshot", "version": 1, "partition": 1, "partitions": 2}',
            "partition 1 of 2, not 0 of 1",
        ),
        (
            b'{"format": "choreo.fraud.snapshot", "version": 1, "partition": 0, "partitions": 1,'
            b' "applied_seq": 3, "state": {"cards": []}, "pending": {}}',
            "does not fit",
        ),
    ],
)
def test_a_snapshot_that_does_not_fit_is_refused(raw: bytes, error: str) -> None:
    with pytest.raises(SnapshotError, match=error):
        decode(raw, 0, 1)


def test_object_names_per_partition() -> None:
    assert object_name(0, 1) == "state-p0-of-1"
    assert object_name(3, 4) == "state-p3-of-4"
