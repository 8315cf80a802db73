"""Ingest's part in event triggers: every validated event (stream DATA) that matches a
deployed workflow's `on` starts one run of it (`shared/workflow/triggers.py`).

Runs start in event order within a batch. An event whose workflow has `max_concurrent`
runs going is handed back with a delay and comes again: it waits, it is not dropped. The
batch is acknowledged only once every run it should start was requested.

Both consumers (lean pull consumers, shared/pull.py) exist only while they are needed:
the events' while a deployed workflow has an event trigger, the lake objects' while one has
a trigger of either kind. Each replica looks every second; the durable is created starting
at the earliest such workflow's deployment, so an event stored after it is never missed
however late the consumer comes, and deleted once none is deployed. Without triggers
nats-server then delivers nothing to ingest: reading every event for nothing cost ingest
and nats-server about 0.13 ms of CPU per event (bench/README.md).
"""

import time
from datetime import UTC, datetime
from functools import partial

import structlog
from nats.js.api import AckPolicy
from nats.js.kv import KeyValue
from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError

from shared.access import INGEST_OBJECT_TRIGGERS, INGEST_TRIGGERS
from shared.envelope import Event
from shared.metrics import Metrics
from shared.pull import PullConsumer, Pulled, stored_at
from shared.settings import Settings
from shared.slot import Slot
from shared.subjects import DATA, LAKE
from shared.workflow import events as ev
from shared.workflow.deployments import Deployed, Deployments
from shared.workflow.runtime import Choreography
from shared.workflow.spec import EventTrigger, ObjectTrigger, Trigger
from shared.workflow.triggers import admit, is_paused, matches, trigger_run_id

log = structlog.get_logger(__name__)
TRIGGER: TypeAdapter[Trigger] = TypeAdapter(Trigger)
TRIGGER_KINDS = (EventTrigger, ObjectTrigger)
# When a workflow's run slots are all taken, the event comes back after this.
WAIT_S = 1.0
# How long a consumer keeps fetching to fill its batch: each batch reads the deployments
# (one KV scan, an ordered consumer on nats-server). Without it a steady trickle of events
# makes batches of a few events, and at 1,200 events/s the reads overloaded ingest.
FILL_S = 0.1
# How old a read of the deployments may be to decide whether a trigger consumer is wanted.
WANTED_STALE_S = 1.0


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

    def consumers(self, settings: Settings) -> list[PullConsumer]:
        """The durable consumers of events and of lake objects, shared by the replicas
        (explicit acks), each on demand (see the module docstring)."""
        found = []
        for stream, durable, what, kinds in (
            (DATA, INGEST_TRIGGERS, "an event", (EventTrigger,)),
            (LAKE, INGEST_OBJECT_TRIGGERS, "an object written to the lake", TRIGGER_KINDS),
        ):
            consumer = PullConsumer(
                self.choreo.settler,
                stream,
                durable,
                settings,
                ack=AckPolicy.EXPLICIT,
                title=f"ingest/{durable}",
                description=f"Starts a run of each deployed workflow whose `on` matches {what}.",
                fill_s=FILL_S,
            )
            consumer.receive_with(partial(self.handle, consumer))
            consumer.on_demand(partial(self.wanted_since, kinds))
            found.append(consumer)
        return found

    async def wanted_since(self, kinds: tuple[type[Trigger], ...]) -> datetime | None:
        """A trigger consumer's `on_demand`, from the deployments read within the last
        `WANTED_STALE_S` (both consumers ask every second: one read serves them both). A
        view that old will do: a durable starts at the deployment's time, not at when it
        was seen."""
        return first_deployed(await self._triggered(time.time() - WANTED_STALE_S), kinds)

    async def handle(self, consumer: PullConsumer, batch: list[Pulled]) -> None:
        """Start the runs a batch of `consumer`'s triggers, settling each delivery."""
        settler = self.choreo.settler
        with settler.measured([p.msg for p in batch], consumer.title):
            try:
                triggered = await self._triggered(stored_at(batch[-1].msg.reply))
            except Exception as exc:
                log.warning("deployments not read, will retry", error=repr(exc))
                for pulled in batch:
                    await settler.retry(pulled.msg, exc)
                return
            if not triggered:
                # No deployed workflow has a trigger: nothing to match.
                await consumer.acknowledge(batch)
                return
            for pulled in batch:
                await self._handle_one(pulled, triggered)

    async def _handle_one(
        self, pulled: Pulled, triggered: list[tuple[Deployed, list[Trigger]]]
    ) -> None:
        msg = pulled.msg
        try:
            event = Event.model_validate(pulled.envelope)
        except ValidationError as exc:
            # Like every consumer of DATA: dead-lettered with the reason, not retried.
            await self.choreo.settler.dead_letter(msg, f"not a valid event envelope: {exc}")
            return
        stored = stored_at(msg.reply)
        # An event stored before the workflow was deployed does not trigger it.
        current = [(d, t) for d, t in triggered if stored >= d.deployed_at]
        try:
            waiting = await self._start_runs(event, current)
        except Exception as exc:
            log.warning("trigger failed, will retry", event_id=event.id, error=repr(exc))
            await self.choreo.settler.retry(msg, exc)
            return
        if waiting:
            await self.choreo.settler.nak(msg, WAIT_S)
        else:
            await self.choreo.settler.ack(msg)

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


def first_deployed(
    triggered: list[tuple[Deployed, list[Trigger]]], kinds: tuple[type[Trigger], ...]
) -> datetime | None:
    """When the first of the deployed workflows with a trigger of `kinds` was deployed;
    None when none has one."""
    since = [d.deployed_at for d, ts in triggered if any(isinstance(t, kinds) for t in ts)]
    return datetime.fromtimestamp(min(since), UTC) if since else None
