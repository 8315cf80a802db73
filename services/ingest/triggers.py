"""Ingest's part in event triggers: every validated event (stream DATA) that matches a
deployed workflow's `on` starts one run of it (`shared/workflow/triggers.py`).

Runs start in event order within a batch. An event whose workflow has `max_concurrent`
runs going is handed back with a delay and comes again: it waits, it is not dropped. The
batch is acknowledged only once every run it should start was requested.
"""

import time
from collections.abc import Sequence

import structlog
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue
from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError

from shared.access import INGEST_OBJECT_TRIGGERS, INGEST_TRIGGERS
from shared.consumer import BatchMessage, batch_subscription
from shared.envelope import Event
from shared.metrics import Metrics
from shared.settings import Settings
from shared.slot import Slot
from shared.subjects import DATA, LAKE
from shared.workflow import events as ev
from shared.workflow.deployments import Deployed, Deployments
from shared.workflow.runtime import Choreography
from shared.workflow.spec import Trigger
from shared.workflow.triggers import admit, is_paused, matches, trigger_run_id

log = structlog.get_logger(__name__)
TRIGGER: TypeAdapter[Trigger] = TypeAdapter(Trigger)
# When a workflow's run slots are all taken, the event comes back after this.
WAIT_S = 1.0


class Triggers:
    """Starts the runs that events trigger."""

    def __init__(
        self, choreography: Choreography, metrics: Metrics, deployments: Slot[Deployments]
    ) -> None:
        self.choreo = choreography
        self.metrics = metrics
        self._deployments = deployments
        self._cached: list[tuple[Deployed, list[Trigger]]] = []
        self._cached_at = 0.0  # wall-clock time of the last read of the deployments
        self.started = Counter(
            "choreo_trigger_runs",
            "Runs requested by event triggers, by outcome: started, exists (a re-sent or "
            "redelivered event), queued (max_concurrent reached: the event waits), paused.",
            ["service", "outcome"],
            registry=metrics.registry,
        )
        for outcome in ("started", "exists", "queued", "paused"):
            self.started.labels(metrics.service, outcome)

    def subscribe(self, broker: NatsBroker, settings: Settings) -> None:
        for stream, durable, what, handler in (
            (DATA, INGEST_TRIGGERS, "an event", self.on_batch),
            (LAKE, INGEST_OBJECT_TRIGGERS, "an object written to the lake", self.on_object_batch),
        ):
            subscription = batch_subscription(stream, durable, settings)
            # Created for the first time, it starts at the stream's end: what was stored
            # before triggers existed starts nothing.
            subscription["config"].deliver_policy = DeliverPolicy.NEW
            broker.subscriber(
                **subscription,
                title=f"ingest/{durable}",
                description=f"Starts a run of each deployed workflow whose `on` matches {what}.",
            )(handler)

    async def on_batch(self, msg: BatchMessage) -> None:
        await self.handle(msg.raw_message)

    async def on_object_batch(self, msg: BatchMessage) -> None:
        await self.handle(msg.raw_message)

    async def handle(self, messages: Sequence[Msg]) -> None:
        newest = max((m.metadata.timestamp.timestamp() for m in messages), default=0.0)
        try:
            triggered = await self._triggered(newest)
        except Exception as exc:
            for msg in messages:
                await self.choreo.settler.retry(msg, exc)
            return
        if not triggered:
            # No deployed workflow has a trigger: nothing to parse or match.
            for msg in messages:
                await msg.ack()
            return
        for msg in messages:
            try:
                event = Event.from_bytes(msg.data)
            except ValidationError as exc:
                # Like every consumer of DATA: dead-lettered with the reason, not retried.
                await self.choreo.settler.dead_letter(msg, f"not a valid event envelope: {exc}")
                continue
            stored = msg.metadata.timestamp.timestamp()
            # An event stored before the workflow was deployed does not trigger it.
            current = [(d, t) for d, t in triggered if stored >= d.deployed_at]
            try:
                waiting = await self._start_runs(event, current)
            except Exception as exc:
                log.warning("trigger failed, will retry", event_id=event.id, error=repr(exc))
                await self.choreo.settler.retry(msg, exc)
                continue
            if waiting:
                await msg.nak(delay=WAIT_S)
            else:
                await msg.ack()

    async def _start_runs(
        self, event: Event, triggered: list[tuple[Deployed, list[Trigger]]]
    ) -> bool:
        """Request the event's runs; True when one must wait for a free slot."""
        waiting = False
        store = self.choreo.store
        kv = self._kv()
        for deployed, triggers in triggered:
            if not any(matches(t, event) for t in triggers):
                continue
            runid = trigger_run_id(deployed.name, event.id)
            if await store.run(runid) is not None:
                self._count("exists")
                continue
            if await is_paused(kv, deployed.name):
                self._count("paused")
                continue
            limit = deployed.workflow.get("max_concurrent")
            if isinstance(limit, int) and not await admit(kv, store, deployed.name, runid, limit):
                self._count("queued")
                waiting = True
                continue
            request = ev.run_requested(
                deployed.workflow,
                {"event": event.model_dump(mode="json")},
                runid,
                source=self.choreo.source,
                version=deployed.version,
            )
            await self.choreo.publisher.publish(request.type, request)
            self._count("started")
        return waiting

    async def _triggered(self, newest: float) -> list[tuple[Deployed, list[Trigger]]]:
        """The deployed workflows with triggers, as of after the newest event was stored (a
        workflow deployed before an event must see it)."""
        if newest >= self._cached_at:
            reading = time.time()
            found = []
            for deployed in await self._store().latest_all():
                raw = deployed.workflow.get("on") or []
                triggers = [TRIGGER.validate_python(t) for t in raw if isinstance(t, dict)]
                if triggers:
                    found.append((deployed, triggers))
            self._cached, self._cached_at = found, reading
        return self._cached

    def _store(self) -> Deployments:
        return self._deployments.get()

    def _kv(self) -> KeyValue:
        return self._store().kv

    def _count(self, outcome: str) -> None:
        self.started.labels(self.metrics.service, outcome).inc()
