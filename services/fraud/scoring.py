"""The fraud consumer: score each `data.transaction` in stream order, publish the verdict;
learn from each `data.fraud_label` (confirmed fraud, services/fraud/feedback.py).

Every transaction gets `fraud.scored`; those not allowed also get `fraud.alert`. Both are
children of the transaction event, with ids derived from its id, so a re-publish is a
JetStream duplicate and the audit keeps one row. The events are built as dicts (the JSON
`Event.child()` would give) and a chunk's are published all at once, their acks awaited
together.

Acknowledgements. Each partition's durable has one consumer (shared/pull.py, with
`AckPolicy.ALL`): one ack of a delivery settles it and every one before it. A chunk is
acknowledged up to the delivery before the first one not settled (its events not stored
by JetStream, or its dead letter not sent), with one ack; nothing after that one may be
acknowledged, so the deliveries left are retried in place after the backoff, and never
given up (the card's state already counts the transaction, so its verdict must come out),
then acknowledged with one ack of the chunk's last delivery. A nak would not do: the next
ack would settle the nak'd delivery unseen.

Partitions. Replicas split the cards: crc32(card_id) % partitions picks the replica that
scores a transaction, so each card's transactions are scored in order by one replica. Each
replica has its own durable consumer on all of `data.transaction` and acks the others'
transactions without scoring them. The price is that every replica reads every transaction;
subjects per partition (`data.transaction.<p>`) would avoid it but break the `data.<type>`
layout that stream DATA and ingest share. Terminal features then see only the transactions
of the replica's own cards.

Labels. A label names only its transaction, so every replica reads every label and applies
it if the transaction is one of its own cards' (the others find it unknown and ack it): the
labels are partitioned like the transactions. One durable consumer reads both subjects, so
labels and transactions are applied in stream order, snapshotted together and replayed
together after a restart.

Redeliveries and restarts. `applied_seq` is the last stream sequence applied to the state,
so nothing is applied twice. The outcome of every delivery not yet acknowledged stays in
`pending`: a transaction retried, or delivered again after a restart, gets the verdict it
had then instead of a new one. A delivery lost on the way (JetStream sent it, the service
never got it: its server killed, a fetch dropped) would be settled unseen by the next ack:
a gap in the consumer's delivery sequence shows it, and the transactions skipped are read
from the stream itself and handled before the delivery after the gap. On start the state is
loaded from the last snapshot and brought up to the durable consumer's last delivered
sequence by replaying the stream, which re-creates the outcomes of the deliveries that may
still come back (see restore()).
"""

import asyncio
import uuid
import zlib
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import orjson
import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from services.fraud.domain import Scored, Scorer
from services.fraud.feedback import Applied
from services.fraud.model import Model, shipped_model
from services.fraud.records import Transaction
from services.fraud.settings import FraudSettings
from services.fraud.snapshot import (
    Outcome,
    Snapshot,
    SnapshotStore,
    Verdict,
    decode,
    encode_detached,
    object_name,
    read_range,
)
from shared.access import fraud_durable
from shared.consumer import Settler
from shared.envelope import Envelope, NotAnEnvelope, child_envelope, parse_envelope
from shared.fraud_models import ModelStore
from shared.jetstream import Encoded, EventPublisher
from shared.metrics import Metrics
from shared.pull import PullConsumer, Pulled, delivery, recreated
from shared.subjects import DATA, FRAUD_ALERT, FRAUD_SCORED, FRAUD_SHADOW, data_subject

log = structlog.get_logger(__name__)

INPUT = data_subject("transaction")
LABELS = data_subject("fraud_label")
SUBJECTS = [INPUT, LABELS]  # the consumer's filter: both, in stream order
SOURCE = "choreo/fraud"
TITLE = "fraud/transactions"
# uuid5 namespace of the fraud events' ids: uuid5(EVENT_IDS, "<transaction event id>:scored").
EVENT_IDS = uuid.UUID("6f1f3c52-1d0e-5c8e-9a53-0c7f6e7a2b41")


def partition_of(card_id: str, partitions: int) -> int:
    """The partition of a card: stable across processes and versions (unlike hash())."""
    return zlib.crc32(card_id.encode()) % partitions


def fraud_events(transaction: Envelope, tx: Transaction, verdict: Verdict) -> list[Encoded]:
    """`fraud.scored`, `fraud.alert` unless allowed, and `fraud.shadow` when a shadow model
    judged it too, serialized: children of the `transaction` event (its checked envelope,
    its data parsed as `tx`), the JSON `Event.child()` would give with shared/fraud.py's
    `FraudVerdict` as their data."""

    def data(v: Verdict) -> dict[str, Any]:
        return {
            "transaction_id": tx.transaction_id,
            "transaction_event_id": transaction["id"],
            "card_id": tx.card_id,
            "terminal_id": tx.terminal_id,
            "amount": tx.amount,
            "currency": tx.currency,
            "timestamp": tx.timestamp,
            "score": float(v.score),
            "decision": v.decision,
            "reasons": v.reasons,
            "rules": {rule: float(push) for rule, push in v.rules.items()},
            "model": v.model,
        }

    kinds = [(FRAUD_SCORED, verdict)]
    if verdict.decision != "allow":
        kinds.append((FRAUD_ALERT, verdict))
    if verdict.shadow is not None:
        kinds.append((FRAUD_SHADOW, verdict.shadow))
    events = []
    for kind, v in kinds:
        event_id = str(uuid.uuid5(EVENT_IDS, f"{transaction['id']}:{kind.rsplit('.', 1)[1]}"))
        event = child_envelope(
            transaction,
            id=event_id,
            type=kind,
            source=SOURCE,
            subject=tx.transaction_id,
            data=data(v),
        )
        events.append(Encoded(kind, event_id, orjson.dumps(event)))
    return events


async def _model(store: ModelStore, version: str) -> Model:
    """A stored model version, checked like a model file (ValueError naming the problem)."""
    model = Model.from_dict(await store.read(version))
    if model.version != version:
        raise ValueError(f"model {version}: the file says it is {model.version}")
    return model


def _verdict(scored: Scored) -> Verdict:
    rules = scored.features["rules"]
    shadow = None if scored.shadow is None else _verdict(scored.shadow)
    return Verdict(scored.score, scored.decision, scored.reasons, rules, scored.model, shadow)


def _card_of(event: Envelope | None) -> str | None:
    data = event.get("data") if event is not None else None
    card = data.get("card_id") if isinstance(data, dict) else None
    return card if isinstance(card, str) else None


class FraudScoring:
    """One partition's scorer, fed by its durable consumer (see the module docstring)."""

    def __init__(
        self,
        settings: FraudSettings,
        settler: Settler,
        publisher: EventPublisher,
        metrics: Metrics,
        models: Callable[[], ModelStore] | None = None,
    ) -> None:
        """`models` gives the model store once S3 is open (None: the shipped model only)."""
        self.settings = settings
        self.partition = settings.fraud_partition
        self.partitions = settings.fraud_partitions
        self.durable = fraud_durable(self.partition, self.partitions)
        self.scorer = Scorer(settings.scoring_config())
        self.shadow: Model | None = None  # a candidate judged beside the active model
        self._models = models
        self._models_tag: str | None = None  # the ETag of the choice last applied
        self.applied_seq = 0
        self.pending: dict[int, Outcome] = {}
        self.delivered = 0  # the consumer's delivery sequence of the last delivery received
        self._js: JetStreamContext | None = None  # once running(): the gaps' replays
        self.restored = False
        self._saved_seq: int | None = None
        self._settler = settler
        self._publisher = publisher
        self._metrics = metrics
        self.decisions = Counter(
            "choreo_fraud_decisions",
            "Transactions scored, by decision (allow, review, block).",
            ["service", "decision"],
            registry=metrics.registry,
        )
        self.labels = Counter(
            "choreo_fraud_labels",
            "Labels received, by what became of them (applied; reset: a card cleared; "
            "duplicate; conflict: contradicts an earlier label; unknown: not a transaction "
            "of this partition within the last 28 days).",
            ["service", "outcome"],
            registry=metrics.registry,
        )
        for outcome in ("applied", "reset", "duplicate", "conflict", "unknown"):
            self.labels.labels(metrics.service, outcome)

    # -- consuming ----------------------------------------------------------------------------

    def owns(self, event: Envelope | None) -> bool:
        """Whether this partition scores `event`; one without a card (it cannot be scored,
        only dead-lettered) belongs to partition 0. Every partition learns from a label."""
        if event is not None and event["type"] == "fraud_label":
            return True
        card = _card_of(event)
        if card is None:
            return self.partition == 0
        return partition_of(card, self.partitions) == self.partition

    def apply(self, seq: int, event: Envelope) -> Outcome | None:
        """Score the transaction at stream sequence `seq` (after every earlier one) and keep
        the outcome until its delivery is settled; for a label, learn from it (None: nothing
        to publish)."""
        return self._apply(seq, event)[0]

    def _apply(self, seq: int, event: Envelope) -> tuple[Outcome | None, Transaction | None]:
        """`apply`, with the transaction as read when it was scored."""
        if event["type"] == "fraud_label":
            self.applied_seq = seq
            return self.learn(seq, event), None
        tx = None
        try:
            tx = Transaction.parse(event.get("data"))
            scored = self.scorer.score(tx.tx, self.shadow)
        except (KeyError, TypeError, ValueError) as exc:
            error = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            outcome = Outcome(None, f"transaction cannot be scored: {error}")
        else:
            outcome = Outcome(_verdict(scored))
        self.pending[seq] = outcome
        self.applied_seq = seq
        return outcome, tx

    def learn(self, seq: int, event: Envelope) -> Outcome | None:
        """Apply a label; a malformed one is dead-lettered by partition 0 only."""
        try:
            data = event.get("data")
            if not isinstance(data, dict):
                raise ValueError("data: not an object")
            applied: Applied = self.scorer.learn(data)
        except ValueError as exc:
            if self.partition != 0:
                return None
            outcome = Outcome(None, f"label cannot be used: {exc}")
            self.pending[seq] = outcome
            return outcome
        self.labels.labels(self._metrics.service, applied).inc()
        return None

    def consumer(self) -> PullConsumer:
        """This replica's durable consumer of transactions and labels (a durable created by
        an earlier version, with explicit acks or without the labels, is re-created from
        its ack floor: shared/pull.py)."""
        # Chunks of deliveries handled one after another: stream order, which the per-card
        # state needs. One consumer filters both subjects, so labels keep their place.
        consumer = PullConsumer(
            self._settler,
            DATA,
            self.durable,
            self.settings,
            ack=AckPolicy.ALL,
            title=TITLE,
            description="Scores the transactions of this replica's partition of the cards, in "
            "stream order: fraud.scored always, fraud.alert unless the decision is allow; "
            "learns from the labels (data.fraud_label) of those transactions.",
            subjects=SUBJECTS,
            batch_size=self.settings.fraud_fetch_batch,
            max_wait_s=self.settings.fraud_fetch_wait_s,
        )
        consumer.receive_with(lambda chunk: self.receive(chunk, consumer.pause))
        return consumer

    async def receive(self, chunk: list[Pulled], pause: Callable[[float], Awaitable[bool]]) -> None:
        """Handle one fetched chunk of deliveries, in stream order, and acknowledge it (see
        the module docstring); `pause(seconds)` waits before a retry, true when stopping."""
        with self._settler.measured([p.msg for p in chunk], TITLE):
            chunk = await self._with_lost(chunk)
            settled = await self._handle(chunk)
            first = settled.index(False) if False in settled else len(chunk)
            if first:
                await self._ack(chunk[:first])
            left = chunk[first:]
            retry = [p for p, done in zip(left, settled[first:], strict=True) if not done]
            attempt = 1
            while retry:
                delay = self.settings.backoff(attempt)
                self._settler.count_retries(Tally(p.subject for p in retry))
                log.warning(
                    "not settled, will retry",
                    first_seq=retry[0].stream_seq,
                    count=len(retry),
                    attempt=attempt,
                    delay_s=delay,
                )
                if await pause(delay):
                    return  # stopping: delivered again from the ack floor when it starts
                again = await self._handle(retry)
                retry = [p for p, done in zip(retry, again, strict=True) if not done]
                attempt += 1
            if left:
                await self._ack(left)

    async def _handle(self, chunk: list[Pulled]) -> list[bool]:
        """Score (or learn from) each delivery not applied yet, publish the verdicts of the
        chunk at once, dead-letter what cannot be scored: for each, whether it is settled
        (its effects stored, it may be acknowledged)."""
        settled = [True] * len(chunk)
        outgoing: list[tuple[int, list[Encoded]]] = []
        for at, pulled in enumerate(chunk):
            event, seq = pulled.envelope, pulled.stream_seq
            if not self.owns(event):
                continue
            outcome: Outcome | None
            tx: Transaction | None = None
            if seq > self.applied_seq:
                outcome, tx = self._apply(seq, event)
                self._count(outcome)
            else:  # a redelivery: its outcome if still pending, else it was settled before
                outcome = self.pending.get(seq)
            if outcome is None:
                continue
            if outcome.verdict is None:
                settled[at] = await self._dead_letter(pulled, outcome.error or "")
            else:  # scored: the transaction was read then (now, for a redelivery)
                tx = tx or Transaction.parse(event["data"])
                outgoing.append((at, fraud_events(event, tx, outcome.verdict)))
        results = await self._publisher.publish_all([e for _, events in outgoing for e in events])
        done = 0
        for at, events in outgoing:
            failed = [r for r in results[done : done + len(events)] if isinstance(r, BaseException)]
            done += len(events)
            if failed:
                seq = chunk[at].stream_seq
                log.warning("publish failed, will retry", stream_seq=seq, error=repr(failed[0]))
                settled[at] = False
        return settled

    async def _with_lost(self, chunk: list[Pulled]) -> list[Pulled]:
        """The chunk with the deliveries lost on the way before it (a gap in the consumer's
        delivery sequence: JetStream sent them, the service never got them) read from the
        stream and put in their place. The next ack would settle them unseen, so they are
        handled with the chunk; not acknowledged themselves (the durable never sees those
        copies), they are covered by the next ack after them."""
        if self._js is None:
            raise RuntimeError("the scorer consumes before running()")
        whole: list[Pulled] = []
        upto = self.applied_seq
        for pulled in chunk:
            _, sent = delivery(pulled.msg.reply)
            if sent > self.delivered + 1 and pulled.stream_seq > upto + 1:
                first, last = upto + 1, pulled.stream_seq - 1
                log.warning(
                    "deliveries lost on the way, read from the stream", first=first, last=last
                )
                async for msg in read_range(self._js, DATA.name, SUBJECTS, first, last):
                    try:
                        envelope = parse_envelope(msg.data)
                    except NotAnEnvelope as exc:
                        if self.owns(None):
                            await self._settler.dead_letter(msg, str(exc))
                        continue
                    whole.append(Pulled(envelope, msg, DATA.name, msg.metadata.sequence.stream, 0))
            self.delivered = sent
            upto = max(upto, pulled.stream_seq)
            whole.append(pulled)
        return whole

    def _count(self, outcome: Outcome | None) -> None:
        if outcome is not None and outcome.verdict is not None:
            self.decisions.labels(self._metrics.service, outcome.verdict.decision).inc()

    async def _replay(self, js: JetStreamContext, first: int, last: int) -> list[Outcome | None]:
        """Apply this partition's events of stream DATA in [first, last] read from the
        stream, in order; their outcomes."""
        outcomes = []
        async for msg in read_range(js, DATA.name, SUBJECTS, first, last):
            try:
                event = parse_envelope(msg.data)
            except NotAnEnvelope:
                continue  # not state: dead-lettered when its delivery comes
            if self.owns(event):
                outcomes.append(self.apply(msg.metadata.sequence.stream, event))
        return outcomes

    async def _ack(self, chunk: list[Pulled]) -> None:
        """Acknowledge a settled run of deliveries with one ack of its last one (of the
        durable's: not a copy read from the stream)."""
        delivered = [p for p in chunk if delivery(p.msg.reply)[0] == self.durable]
        if delivered:
            await delivered[-1].msg.ack()
            self._settler.count_acked(Tally(p.subject for p in delivered))
        scored = []
        for pulled in chunk:
            # After the ack: a snapshot never misses an unacknowledged outcome.
            outcome = self.pending.pop(pulled.stream_seq, None)
            if outcome is not None and outcome.verdict is not None:
                scored.append((pulled.envelope["type"], pulled.envelope["time"]))
        self._settler.observe_latencies(scored)

    async def _dead_letter(self, pulled: Pulled, reason: str) -> bool:
        """Dead-letter a delivery; False when it could not be (it is retried)."""
        try:
            await self._settler.dead_letter(pulled.msg, reason)
        except Exception as exc:
            log.warning(
                "dead-lettering failed, will retry", stream_seq=pulled.stream_seq, error=repr(exc)
            )
            return False
        return True

    # -- state across restarts ----------------------------------------------------------------

    @asynccontextmanager
    async def running(self, connect: Callable[[], JetStreamContext]) -> AsyncIterator[None]:
        """A service resource: restore the state before consuming starts; snapshot it
        every interval while running and once more on a graceful stop. `connect` gives the
        JetStream context once the broker is connected."""
        js = self._js = connect()
        name = object_name(self.partition, self.partitions)
        store = await SnapshotStore.open(js, self.settings, name)
        await self.refresh_models()  # before the replay: it scores with the chosen model
        await self.restore(js, store)
        tasks = [
            asyncio.create_task(self._snapshot_every(js, store), name="fraud-snapshots"),
            asyncio.create_task(self._watch_models(), name="fraud-models"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            try:
                await self.snapshot(js, store)
            except Exception as exc:  # the replay from the previous snapshot covers it
                log.warning("final snapshot failed", error=repr(exc))

    async def restore(self, js: JetStreamContext, store: SnapshotStore) -> None:
        """Load the snapshot, then replay what the durable consumer delivered after it.

        Deliveries up to the consumer's last delivered sequence may come back (those not
        acknowledged before a crash); re-scoring them in stream order from the snapshot's
        state gives the same verdicts as before, which `pending` then holds for them.
        Transactions at or before the snapshot's `applied_seq` that were still unsettled
        are in the snapshot's `pending` already."""
        raw = await store.load()
        if raw is not None:
            snapshot = decode(raw, self.partition, self.partitions)
            self.scorer.state = snapshot.state
            self.applied_seq = self._saved_seq = snapshot.applied_seq
            self.pending = snapshot.pending
            log.info(
                "state restored from snapshot",
                applied_seq=snapshot.applied_seq,
                cards=len(snapshot.state.cards),
                pending=len(snapshot.pending),
                bytes=len(raw),
            )
        try:
            info = await js.consumer_info(DATA.name, self.durable)
        except NotFoundError:
            delivered = acked = 0
        else:
            delivered = info.delivered.stream_seq or 0
            acked = info.ack_floor.stream_seq or 0
            # Where the consumer's delivery sequence goes on from: a re-created durable
            # numbers its deliveries from 1 again (a gap is then seen from the first one).
            recreating = recreated(info, AckPolicy.ALL)
            self.delivered = 0 if recreating else info.delivered.consumer_seq or 0
        replayed = len(await self._replay(js, self.applied_seq + 1, delivered))
        self.applied_seq = max(self.applied_seq, delivered)
        self._forget_acked(acked)
        self.restored = True
        log.info(
            "state rebuilt",
            partition=self.partition,
            partitions=self.partitions,
            replayed=replayed,
            applied_seq=self.applied_seq,
            pending=len(self.pending),
        )

    async def refresh_models(self) -> bool:
        """Apply the current choice of models (shared/fraud_models.py) if it changed since
        the last one applied: the active model (none chosen: the shipped one) and the
        shadow. The switch happens between two transactions: each is scored once, by one
        model, whose version its verdict records. True when it switched."""
        if self._models is None:
            return False
        store = self._models()
        current, tag = await store.current()
        if tag == self._models_tag:
            return False
        active = shipped_model() if current.active is None else await _model(store, current.active)
        shadow = None if current.shadow is None else await _model(store, current.shadow)
        self.scorer.model, self.shadow, self._models_tag = active, shadow, tag
        log.info(
            "models switched",
            active=active.version,
            shadow=None if shadow is None else shadow.version,
        )
        return True

    async def _watch_models(self) -> None:
        """Read the current choice every CHOREO_FRAUD_MODEL_POLL_S; a choice that cannot be
        applied (a missing or invalid model) is logged and the running models kept."""
        while True:
            await asyncio.sleep(self.settings.fraud_model_poll_s)
            try:
                await self.refresh_models()
            except Exception as exc:
                log.error("models not switched, the running ones kept", error=repr(exc))

    async def ready(self) -> None:
        """Readiness: the state is rebuilt (before that, scores would be wrong)."""
        if not self.restored:
            raise RuntimeError("the scorer's state is being rebuilt")

    async def snapshot(self, js: JetStreamContext, store: SnapshotStore) -> None:
        """Save the state if it changed since the last snapshot."""
        if self.applied_seq == self._saved_seq:
            return
        try:
            info = await js.consumer_info(DATA.name, self.durable)
        except NotFoundError:
            pass
        else:
            self._forget_acked(info.ack_floor.stream_seq or 0)
        # The fork in encode_detached is the cut: the state as of `seq`, between two chunks.
        seq = self.applied_seq
        data = await encode_detached(
            Snapshot(self.partition, self.partitions, seq, self.scorer.state, self.pending)
        )
        await store.save(data)
        self._saved_seq = seq
        log.info("snapshot saved", applied_seq=seq, pending=len(self.pending), bytes=len(data))

    async def _snapshot_every(self, js: JetStreamContext, store: SnapshotStore) -> None:
        while True:
            await asyncio.sleep(self.settings.fraud_snapshot_interval_s)
            try:
                await self.snapshot(js, store)
            except Exception as exc:  # NATS unavailable: the next one will do
                log.error("snapshot failed", error=repr(exc))

    def _forget_acked(self, ack_floor: int) -> None:
        """Drop outcomes of deliveries at or below the ack floor: they never come back."""
        for seq in [s for s in self.pending if s <= ack_floor]:
            del self.pending[seq]
