"""Ingest's part in schedules: each fire nats-server stores on `schedule.fire.<name>`
becomes one run of the schedule's deployed workflow (`shared/workflow/schedules.py`).

The run id derives from the schedule's name and the fire time, so a redelivered fire, a
second ingest replica or a backfill that covered the same fire start no second run. A fire
whose schedule names a workflow that is not deployed (any more) is dead-lettered with the
reason; one that cannot be read at all too.
"""

import structlog
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import Counter
from pydantic import ValidationError

from shared.access import INGEST_SCHEDULES
from shared.consumer import message_subscription
from shared.envelope import Event
from shared.metrics import Metrics
from shared.settings import Settings
from shared.slot import Slot
from shared.subjects import SCHEDULES
from shared.workflow.deployments import DeploymentError, Deployments, open_bucket
from shared.workflow.runtime import Choreography
from shared.workflow.schedules import (
    FIRE_PREFIX,
    Fire,
    ScheduleSpec,
    open_state,
    parse_next,
    start_fire,
)
from shared.workflow.triggers import admit

log = structlog.get_logger(__name__)
# A fire whose workflow has max_concurrent runs going comes back after this.
QUEUED_RETRY_S = 1.0


class ScheduleFires:
    """Turns schedule fires into run requests."""

    def __init__(self, choreography: Choreography, metrics: Metrics) -> None:
        self.choreo = choreography
        self.deployments: Slot[Deployments] = Slot("the deployments bucket")
        self.state: Slot[KeyValue] = Slot("the schedules' state bucket")
        self.fires = Counter(
            "choreo_schedule_fires",
            "Schedule fires handled, by outcome: started (a run was requested), exists (its "
            "run was requested before: a redelivery or a backfill), skipped (--overlap skip "
            "and the previous run still ran), queued (max_concurrent reached: it waits).",
            ["service", "outcome"],
            registry=metrics.registry,
        )
        for outcome in ("started", "exists", "skipped", "queued"):
            self.fires.labels(metrics.service, outcome)
        self.service = metrics.service

    async def open(self, js: JetStreamContext) -> None:
        """Open the buckets (an `on_ready` hook, before the subscribers start)."""
        settings = self.choreo.settings
        self.deployments.set(Deployments(await open_bucket(js, settings)))
        self.state.set(await open_state(js, settings))

    def subscribe(self, broker: NatsBroker, settings: Settings) -> None:
        broker.subscriber(
            **message_subscription(f"{FIRE_PREFIX}*", SCHEDULES, INGEST_SCHEDULES, settings),
            title="ingest/schedule.fire",
            description="Starts one run of the schedule's deployed workflow per fire.",
        )(self.on_fire)

    async def on_fire(self, msg: NatsMessage) -> None:
        raw = msg.raw_message
        settler = self.choreo.settler
        try:
            spec = ScheduleSpec.model_validate_json(raw.data)
            next_fire = parse_next((raw.headers or {}).get("Nats-Schedule-Next"))
            fire = Fire(spec, spec.fire_time(next_fire))
            deployed = await self.deployments.get().resolve(spec.workflow)
        except (ValidationError, ValueError, DeploymentError) as exc:
            await settler.dead_letter(raw, f"schedule fire cannot start a run: {exc}")
            return
        except Exception as exc:
            await settler.retry(raw, exc)
            return
        limit = deployed.workflow.get("max_concurrent")
        store = self.deployments.get()

        async def slot(runid: str) -> bool:
            if not isinstance(limit, int):
                return True
            return await admit(store.kv, self.choreo.store, deployed.name, runid, limit)

        try:
            outcome = await start_fire(
                fire,
                self.choreo.store,
                self.state.get(),
                deployed.workflow,
                deployed.version,
                self._publish,
                source=self.choreo.source,
                admit=slot,
            )
        except Exception as exc:
            log.warning("schedule fire failed, will retry", schedule=spec.name, error=repr(exc))
            await settler.retry(raw, exc)
            return
        self.fires.labels(self.service, outcome).inc()
        if outcome == "queued":
            await raw.nak(delay=QUEUED_RETRY_S)  # waits for a run slot, never dropped
            return
        await raw.ack()
        log.info("schedule fired", schedule=spec.name, runid=fire.runid, outcome=outcome)

    async def _publish(self, event: Event) -> None:
        await self.choreo.publisher.publish(event.type, event)
