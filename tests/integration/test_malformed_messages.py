"""Malformed and truncated messages on every subject a service consumes through JetStream,
with every service running as its own process: each is dead-lettered to `dlq.<service>`
with its reason, by every service that consumes it, and every consumer goes on (nothing
left pending or unacknowledged, and a valid event published after them is handled)."""

import importlib
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from shared.envelope import Event
from shared.settings import Settings
from shared.subjects import DLQ, FRAUD, SERVICES, dlq_subject, subject_matches
from shared.workflow.deployments import Deployments, open_bucket
from tests.samples import TRANSACTION
from tests.support import wait_for

pytestmark = pytest.mark.integration

ENVELOPE = Event(type="transaction", source="tests", data=TRANSACTION).to_bytes()
MALFORMED = {
    "empty": b"",
    "not JSON": b"this is not JSON {",
    "truncated envelope": ENVELOPE[: len(ENVELOPE) // 2],
    "JSON, not an envelope": b'{"a": 1}',
    "a JSON array": b"[1, 2, 3]",
    "invalid UTF-8": b"\xff\xfe\x00garbage",
}

# Deployed for the test so that ingest's trigger consumers read every event (with no
# triggered workflow deployed they acknowledge without reading); it matches nothing.
WATCHER = "malformed-watch"
TRIGGERED = {
    "name": WATCHER,
    "inputs": {"event": {"type": "object"}},
    "on": [
        {"event": "sale", "where": {"data.region": "no-such-region"}},
        {"object": "no-such-prefix/**"},
    ],
    "steps": [{"id": "log", "uses": "audit.log", "with": {"message": "never runs"}}],
}


@dataclass(frozen=True)
class Consumer:
    service: str
    subject: str  # the filter, with wildcards
    stream: str
    durable: str


def consumers() -> list[Consumer]:
    """Every JetStream consumer of every service, as its app declares it."""
    found = []
    for name in SERVICES:
        service = importlib.import_module(f"services.{name}.app").create_app()
        for subscriber in service.broker.subscribers:
            stream = getattr(subscriber, "stream", None)
            if stream is None:  # core NATS request-reply (audit.events.get), not JetStream
                continue
            subject = str(subscriber.subject.broker_address)
            found.append(Consumer(name, subject, stream.name, subscriber.config.durable_name))
        for pull in service.consumers:  # shared/pull.py's, outside FastStream
            found += [Consumer(name, s, pull.stream, pull.durable) for s in pull.subjects]
    return found


def concrete(subject: str) -> str:
    """A subject the filter receives: its wildcards filled in."""
    return subject.replace(">", "malformed").replace("*", "malformed")


async def dead_letters(js: JetStreamContext, service: str) -> list[dict[str, Any]]:
    """Every dead letter of `service` so far (read with an ephemeral ordered consumer)."""
    info = await js.stream_info(DLQ.name, subjects_filter=dlq_subject(service))
    count = (info.state.subjects or {}).get(dlq_subject(service), 0)
    if not count:
        return []
    sub = await js.subscribe(dlq_subject(service), ordered_consumer=True)
    letters = []
    try:
        for _ in range(count):
            msg = await sub.next_msg(timeout=10)
            letters.append(json.loads(msg.data)["data"])
    finally:
        await sub.unsubscribe()
    return letters


async def test_malformed_messages_are_dead_lettered_with_a_reason_and_consumers_go_on(
    services: dict[str, str], nats_url: str
) -> None:
    found = consumers()
    subjects = sorted({concrete(c.subject) for c in found})
    assert len(subjects) >= 10
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    deployments = Deployments(await open_bucket(js, Settings(nats_url=nats_url)))
    await deployments.deploy(WATCHER, TRIGGERED)
    try:
        await wait_for(lambda: _ready(js, found), bool, within=60)
        expected: dict[str, set[tuple[str, int]]] = defaultdict(set)
        for subject in subjects:
            for payload in MALFORMED.values():
                ack = await js.publish(subject, payload)
                for c in found:
                    if c.stream == ack.stream and subject_matches(c.subject, subject):
                        expected[c.service].add((subject, ack.seq))
        # A valid transaction after all of them: fraud still scores.
        valid = Event(type="transaction", source="tests", data=TRANSACTION)
        await js.publish("data.transaction", valid.to_bytes(), headers=valid.headers())

        async def missing() -> dict[str, set[tuple[str, int]]]:
            left = {}
            for service, wanted in expected.items():
                got = {(d["subject"], d["stream_seq"]) for d in await dead_letters(js, service)}
                if wanted - got:
                    left[service] = wanted - got
            return left

        assert await wait_for(missing, lambda left: not left, within=90) == {}
        for service, wanted in expected.items():
            # Only this test's letters: the session's servers hold other tests' too (a step
            # given up after its retries, rightly delivered more than once).
            for letter in await dead_letters(js, service):
                if (letter["subject"], letter["stream_seq"]) not in wanted:
                    continue
                assert letter["reason"], letter
                assert letter["deliveries"] == 1, f"parsed once, dead-lettered at once: {letter}"

        async def unsettled() -> list[str]:
            waiting = []
            for c in found:
                info = await js.consumer_info(c.stream, c.durable)
                if info.num_pending or info.num_ack_pending:
                    waiting.append(f"{c.durable}: {info.num_pending}/{info.num_ack_pending}")
            return waiting

        assert await wait_for(unsettled, lambda w: not w, within=60) == []

        async def scored() -> bool:
            sub = await js.subscribe(
                "fraud.scored", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
            )
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=1)
                    except nats.errors.TimeoutError:
                        return False
                    if json.loads(msg.data).get("causationid") == valid.id:
                        return True
            finally:
                await sub.unsubscribe()

        assert await wait_for(scored, bool, within=60), f"no {FRAUD.name} score of {valid.id}"
    finally:
        await deployments.undeploy(WATCHER)
        await nc.close()


async def _ready(js: JetStreamContext, found: list[Consumer]) -> bool:
    """Every consumer exists (each service created its own at start-up)."""
    for c in found:
        try:
            await js.consumer_info(c.stream, c.durable)
        except nats.js.errors.NotFoundError:
            return False
    return True
