"""The run lifecycle: starting runs, cancelling them, retrying them (the ingest service
subscribes it).

`wf.run.requested` -> validate, store the run in KV, `wf.run.started`, and a step request
for every step without `needs`. Each handler is idempotent: a redelivered command replays
the same events (same ids), which JetStream de-duplicates.

`max_concurrent: N` holds here, for every run of the workflow however it was requested
(`choreo run`, `POST /v1/runs`, a schedule fire, a backfill, a trigger): a run starts only
once it holds one of the workflow's N slots (`shared/workflow/triggers.py:admit`). A request
that finds none is moved to `wf.run.queued` (its own durable, so a long queue never holds
up the requests of other workflows) and handed back there every `QUEUED_WAIT_S` until a
slot frees: it waits, it is never dropped. Triggers and schedule fires take their slot
before they request the run (their events wait in their own streams); a slot is held per
run id, so the run finds it held and starts.
"""

from collections.abc import Callable, Mapping

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.js.kv import KeyValue

from shared.access import (
    INGEST_CANCELS,
    INGEST_QUEUED,
    INGEST_RETRIES,
    INGEST_RUNS,
    INGEST_WAITING,
)
from shared.consumer import message_subscription
from shared.envelope import Event
from shared.settings import Settings
from shared.subjects import WORKFLOW
from shared.workflow import events as ev
from shared.workflow.kinds import STEP_KINDS, StepKind
from shared.workflow.runtime import Choreography, parse_data
from shared.workflow.spec import WorkflowSpec
from shared.workflow.state import RunRecord
from shared.workflow.triggers import admit
from shared.workflow.validate import validate_workflow

# A queued run request looks for a free slot again after this.
QUEUED_WAIT_S = 1.0


class RunLifecycle:
    def __init__(
        self,
        choreography: Choreography,
        kinds: Mapping[str, StepKind] = STEP_KINDS,
        *,
        slots: Callable[[], KeyValue],
    ) -> None:
        """`slots`: the bucket of the workflows' run slots (the deployments bucket)."""
        self.choreo = choreography
        self.kinds = kinds
        self.slots = slots

    def subscribe(self, broker: NatsBroker, settings: Settings) -> None:
        handlers = {
            ev.RUN_REQUESTED: (INGEST_RUNS, self.on_run_requested),
            ev.RUN_QUEUED: (INGEST_QUEUED, self.on_run_requested),
            ev.RUN_CANCEL_REQUESTED: (INGEST_CANCELS, self.on_cancel_requested),
            ev.RUN_RETRY_REQUESTED: (INGEST_RETRIES, self.on_retry_requested),
            ev.STEP_WAITING: (INGEST_WAITING, self.on_step_waiting),
        }
        for subject, (durable, handler) in handlers.items():
            broker.subscriber(
                **message_subscription(subject, WORKFLOW, durable, settings),
                title=f"ingest/{subject}",
            )(handler)

    async def on_run_requested(self, msg: NatsMessage) -> None:
        await self.choreo.settler.handle_one(msg.raw_message, self.start_run)

    async def on_cancel_requested(self, msg: NatsMessage) -> None:
        await self.choreo.settler.handle_one(msg.raw_message, self.cancel_run)

    async def on_retry_requested(self, msg: NatsMessage) -> None:
        await self.choreo.settler.handle_one(msg.raw_message, self.retry_run)

    async def on_step_waiting(self, msg: NatsMessage) -> None:
        await self.choreo.settler.handle_one(msg.raw_message, self.choreo.watch_waiting)

    async def start_run(self, event: Event) -> float | None:
        """Start the run, or queue it while its workflow's `max_concurrent` runs go on (a
        `wf.run.requested` is moved to `wf.run.queued`; a queued one is seen again later)."""
        request = parse_data(ev.RunRequested, event)
        runid = event.runid or event.id
        cause = event.model_copy(update={"runid": runid})
        kinds = {**await self.choreo.registry.registered(), **self.kinds}
        checked = validate_workflow(request.workflow, request.inputs, kinds)
        if not checked.ok or checked.spec is None:
            name = request.workflow.get("name")
            await self.choreo.publisher.publish(
                ev.RUN_FAILED,
                cause.child(
                    type=ev.RUN_FAILED,
                    source=self.choreo.source,
                    id=f"{runid}:invalid",
                    data=ev.RunEnded(
                        name=name if isinstance(name, str) else "?",
                        reason="the workflow is invalid",
                        problems=[str(p) for p in checked.problems],
                    ).model_dump(mode="json"),
                ),
            )
            return None
        spec = checked.spec
        if not await self._has_slot(spec, runid):
            if event.type == ev.RUN_QUEUED:
                return QUEUED_WAIT_S
            queued = cause.child(
                type=ev.RUN_QUEUED, source=self.choreo.source, id=f"{runid}:queued", data=event.data
            )
            await self.choreo.store.mark_queued(runid, spec.name)
            await self.choreo.publisher.publish(ev.RUN_QUEUED, queued)
            return None
        store = self.choreo.store
        record = RunRecord(runid, spec.dump(), checked.inputs)
        if not await store.create_run(record):
            record = await store.run(runid) or record
        await self._start_generation(cause, record, spec)
        return None

    async def _has_slot(self, spec: WorkflowSpec, runid: str) -> bool:
        """Whether the run may start: its workflow sets no max_concurrent, the run exists
        already (a redelivered request), or it took one of the workflow's free slots."""
        limit = spec.max_concurrent
        if limit is None or await self.choreo.store.run(runid) is not None:
            return True
        return await admit(self.slots(), self.choreo.store, spec.name, runid, limit)

    async def cancel_run(self, event: Event) -> None:
        record = await self.choreo.store.run(event.runid or "")
        if record is None or record.status != "running":
            return  # unknown, or ended already: nothing to cancel
        reason = parse_data(ev.RunCommand, event).reason or "cancelled on request"
        spec = WorkflowSpec.model_validate(record.workflow)
        await self.choreo.end_run(event, record, spec, "cancelled", reason=reason)
        return

    async def retry_run(self, event: Event) -> None:
        """Start a new generation: failed and skipped steps run again, done ones do not."""
        store = self.choreo.store
        record = await store.run(event.runid or "")
        if record is None:
            return
        if event.id not in record.retries:
            if record.status not in ("failed", "cancelled"):
                return  # running or completed: nothing to retry
            changed = await store.change_run(
                record.runid,
                expect=("failed", "cancelled"),
                status="running",
                generation=record.generation + 1,
                reason=None,
                retries=[*record.retries, event.id],
            )
            if changed is None:
                return
            record = changed
        await self._start_generation(event, record, WorkflowSpec.model_validate(record.workflow))
        return

    async def _start_generation(self, cause: Event, record: RunRecord, spec: WorkflowSpec) -> None:
        """`wf.run.started`, then a request for every step not done whose needs are done."""
        started = cause.child(
            type=ev.RUN_STARTED,
            source=self.choreo.source,
            id=f"{record.runid}:started:{record.generation}",
            data=ev.RunStarted(
                name=spec.name,
                inputs=record.inputs,
                steps=[s.id for s in spec.steps],
                generation=record.generation,
            ).model_dump(mode="json"),
        )
        await self.choreo.publisher.publish(ev.RUN_STARTED, started)
        done = await self.choreo.store.done_steps(record.runid, [s.id for s in spec.steps])
        for step in spec.steps:
            if step.id not in done and set(step.needs) <= done:
                await self.choreo.request_step(started, record, spec, step.id)
