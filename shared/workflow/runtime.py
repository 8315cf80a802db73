"""The choreography runtime every service runs: no orchestrator, only events and KV.

A service that owns step kinds subscribes to `wf.step.<service>.requested`. For each
request it claims the attempt in the run-state bucket (so two replicas never both run it),
renders the step's templates from the run's inputs and its upstream outputs, runs it,
stores the output, publishes `wf.step.completed`, and advances the run: it records itself
once as a finished dependency of each join (a successor with several needs), and requests
every successor whose needs are now all done, one that needs only this step at once
(message id `run:step:attempt`, de-duplicated by JetStream). Calls that do not depend on
one another are made together: a step waits for few round trips to nats-server. Whoever
finds every step done completes the run. A failed attempt is retried after the step's
backoff; the last failed attempt fails the run and skips the steps that had not started.
Only the step's own code fails an attempt: an error of the runtime's calls to nats-server
around it fails the handling, and the request comes back after the consumer's backoff.

Every step is safe to replay: a redelivered request whose output exists re-runs only the
idempotent "after success" part, and every event has a deterministic id.
"""

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import structlog
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, ValidationError

from shared.access import steps_durable
from shared.consumer import Settler, Unprocessable, message_subscription
from shared.envelope import Event
from shared.jetstream import EventPublisher
from shared.metrics import Metrics
from shared.settings import Settings
from shared.subjects import WORKFLOW
from shared.workflow import dag
from shared.workflow import events as ev
from shared.workflow.kinds import STEP_KINDS
from shared.workflow.registry import KindRegistry, open_registry
from shared.workflow.spec import StepSpec, WorkflowSpec
from shared.workflow.state import AttemptKey, Claim, RunRecord, RunStore, ensure_bucket
from shared.workflow.steps import StepContext, StepFailed, StepFunction, StepOutput, StepRegistry
from shared.workflow.templates import TemplateError, referenced_steps, render

log = structlog.get_logger(__name__)

GIVEN_UP = "given-up"
"""The holder of a claim whose attempt timed out waiting for a worker: nobody runs it."""

DataT = TypeVar("DataT", bound=BaseModel)


def parse_data(model: type[DataT], event: Event) -> DataT:
    """The event's data as `model`; Unprocessable (dead-lettered) when it does not fit."""
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise Unprocessable(f"{event.type} with unexpected data: {exc}") from exc


class Choreography:
    """The workflow side of one service: run owned steps, advance and end runs."""

    def __init__(
        self,
        service: str,
        broker: NatsBroker,
        publisher: EventPublisher,
        settler: Settler,
        settings: Settings,
        steps: StepRegistry | None = None,
        concurrency: int = 16,
    ) -> None:
        self.service = service
        self.concurrency = concurrency
        self.source = f"choreo/{service}"
        self.publisher = publisher
        self.settler = settler
        self.settings = settings
        self.steps = steps if steps is not None else StepRegistry(service)
        self.instance = f"{service}-{uuid.uuid4().hex[:12]}"
        self.lease_s = max(settings.ack_wait_s, 1.0)
        self._store: RunStore | None = None
        self._registry: KindRegistry | None = None
        self._broker = broker

    @classmethod
    def create(
        cls,
        service: str,
        settings: Settings,
        broker: NatsBroker,
        metrics: Metrics,
        steps: StepRegistry | None = None,
        *,
        concurrency: int = 16,
    ) -> "Choreography":
        """The runtime with its own publisher and settler (exposed for the service's use)."""
        publisher = EventPublisher(broker, metrics)
        settler = Settler(service, publisher, metrics, settings)
        return cls(service, broker, publisher, settler, settings, steps, concurrency)

    @property
    def store(self) -> RunStore:
        if self._store is None:
            raise RuntimeError("the run-state bucket is not open yet")
        return self._store

    @property
    def registry(self) -> KindRegistry:
        if self._registry is None:
            raise RuntimeError("the step registry bucket is not open yet")
        return self._registry

    async def open(self, js: JetStreamContext) -> None:
        """Open the run-state and step registry buckets (an `on_ready` hook of the service);
        the settler starts reporting the service's DLQ depth."""
        self._store = RunStore(await ensure_bucket(js, self.settings))
        self._registry = await open_registry(js, self.settings)
        await self.settler.open(js)

    def subscribe(self) -> None:
        """Consume this service's step requests, when it owns any step kind."""
        if not self.steps.kinds:
            return
        subject = ev.step_requested(self.service)
        self._broker.subscriber(
            **message_subscription(
                subject,
                WORKFLOW,
                steps_durable(self.service),
                self.settings,
                concurrency=self.concurrency,
            ),
            title=f"{self.service}/steps",
            description=f"Runs the workflow steps the {self.service} service owns.",
        )(self.on_step_requested)

    # -- handling a step request -----------------------------------------------------------

    async def on_step_requested(self, msg: NatsMessage) -> None:
        raw = msg.raw_message
        await self.settler.handle_one(raw, lambda event: self._handle(raw, event))

    async def _handle(self, raw: Msg, event: Event) -> float | None:
        """Run (or replay) one requested attempt; seconds to wait before looking again."""
        request = parse_data(ev.StepRequested, event)
        runid = event.runid or ""
        # Both read before anything is decided, so read together.
        record, output = await asyncio.gather(
            self.store.run(runid), self.store.output(runid, request.step)
        )
        if record is None:
            raise Unprocessable(f"unknown run {runid!r}")
        spec = WorkflowSpec.model_validate(record.workflow)
        step = spec.step(request.step)
        key = AttemptKey(runid, step.id, request.generation, request.attempt)
        if output is not None:
            # Done before (a redelivery, or a crash after the output was stored): replay
            # the idempotent rest so the run still advances (the run was read just now).
            await self._succeeded(event, record, spec, key, output, duration=None)
        elif record.status != "running" or request.generation != record.generation:
            log.info("step not started: run is not running", status=record.status)
        elif request.not_before and request.not_before > datetime.now(UTC):
            return max((request.not_before - datetime.now(UTC)).total_seconds(), 0.05)
        else:
            claimed = await self.store.claim(key, self.instance, self.lease_s)
            if not claimed.won and claimed.claim.owner == GIVEN_UP:
                log.info("step not started: it timed out waiting for a worker", step=step.id)
            elif not claimed.won:
                # Another replica runs it; look again once its lease would have expired.
                return max(claimed.claim.lease_until - time.time(), 0.2)
            else:
                await self._execute(raw, event, record, spec, step, key, claimed.claim)
        return None

    async def _execute(
        self,
        raw: Msg,
        event: Event,
        record: RunRecord,
        spec: WorkflowSpec,
        step: StepSpec,
        key: AttemptKey,
        claim: Claim,
    ) -> None:
        function = self.steps.get(step.uses)
        started = time.monotonic()
        logs = _LogSender(self, event, key, claim)
        # Only the step's own code (and its templates) decides the attempt's outcome. The
        # platform's calls around it (reading the upstream outputs, publishing the start,
        # storing the output) raise instead: the handling fails and the request comes back
        # after the consumer's backoff, the claim still ours. A timeout or "no responders"
        # while a leader is elected (a partition, a node restarting) delays the step; it
        # never fails it.
        # Any upstream step, not only a direct need (the validator checked that).
        outputs = await self.store.outputs(record.runid, sorted(referenced_steps(step.with_)))
        try:
            if function is None:
                raise StepFailed(f"{self.service} does not implement {step.uses!r}")
            params = render(step.with_, record.inputs, outputs)
        except (StepFailed, TemplateError) as exc:
            await self._failed(event, record, spec, key, str(exc), permanent=True)
            return
        # A takeover starts the attempt again, visibly: its own event id.
        again = f":takeover{claim.takeovers}" if claim.takeovers else ""
        await self._publish(
            event.child(
                type=ev.STEP_STARTED,
                source=self.source,
                id=f"{key.message_id}:started{again}",
                attempt=key.attempt,
                data=ev.StepStarted(
                    step=step.id,
                    generation=key.generation,
                    uses=step.uses,
                    service=self.service,
                    inputs=params,
                    takeovers=claim.takeovers,
                    taken_from=claim.taken_from,
                ).model_dump(mode="json"),
            )
        )
        context = StepContext(
            record.runid,
            step.id,
            step.uses,
            key.attempt,
            key.generation,
            params,
            record.inputs,
            logs.lines,
        )
        error: str | None = None
        permanent = False
        try:
            output = await self._run_with_heartbeat(
                raw, key, claim, logs, function, context, spec.timeout_of(step)
            )
        except StepFailed as exc:
            error, permanent = str(exc), True
        except _TimedOut:
            error = f"timed out after {spec.timeout_of(step):g} s"
        except Exception as exc:  # a TimeoutError of the step's own code (a call it made) too
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            await logs.send()
            await self._failed(event, record, spec, key, error, permanent=permanent)
            return
        duration = time.monotonic() - started
        # The output, the lines logged and the run as it is now (was it cancelled while the
        # step ran?) do not depend on one another: written and read together.
        _, _, current = await asyncio.gather(
            self.store.put_output(record.runid, step.id, output),
            logs.send(),
            self.store.run(record.runid),
        )
        log.info("step completed", step=step.id, attempt=key.attempt, duration_s=duration)
        await self._succeeded(event, current or record, spec, key, output, duration=duration)

    async def _run_with_heartbeat(
        self,
        raw: Msg,
        key: AttemptKey,
        claim: Claim,
        logs: "_LogSender",
        function: StepFunction,
        context: StepContext,
        timeout_s: float,
    ) -> StepOutput:
        """Run the step within its timeout, telling JetStream and the claim we are alive,
        and publishing what it logs as it goes (`wf.step.log`; the caller sends the last
        lines once the step returned)."""

        # The heartbeat stops when `done` is set, not only when cancelled: on Python 3.11 a
        # cancellation arriving as one of its calls to nats-server completes can be lost
        # (asyncio.wait_for, inside nats-py), and a heartbeat beating on after its step
        # returned would keep the attempt alive, and its run waiting, for ever.
        done = asyncio.Event()

        async def heartbeat() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.lease_s / 3):
                        await done.wait()
                if done.is_set():
                    return
                try:
                    await raw.in_progress()
                    await self.store.renew(key, claim, self.lease_s)
                except Exception as exc:  # the server busy or unreachable: at the next beat
                    log.warning("step heartbeat failed", step=key.step, error=repr(exc))
                await logs.send()

        beat = asyncio.create_task(heartbeat())
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                return await function(context)
        except TimeoutError as exc:
            if deadline.expired():
                raise _TimedOut from exc
            raise
        finally:
            done.set()
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)  # no send in flight

    # -- after an attempt ------------------------------------------------------------------

    async def _succeeded(
        self,
        cause: Event,
        current: RunRecord,
        spec: WorkflowSpec,
        key: AttemptKey,
        output: StepOutput,
        duration: float | None,
    ) -> None:
        """Publish the step's completion and advance the run. `current`: the run read once
        the output existed (a run cancelled or failed meanwhile is not advanced)."""
        step = spec.step(key.step)
        completed = self._step_event(
            cause, ev.STEP_COMPLETED, key, step, output=output, duration_s=duration
        )
        successors = dag.successors({s.id: s.needs for s in spec.steps}, step.id)
        if current.status not in ("running", "completed") or not successors:
            await self._publish(completed)
            if successors:
                return  # cancelled or failed meanwhile: not advanced
            await self.complete_if_done(completed, current, spec)
            return
        # Requesting the successors does not wait for the completion's ack: both are
        # published at once, the completion first, on the one connection (which keeps
        # their order). A failed publish fails the handling: the redelivered request
        # finds the output and replays both (deterministic ids, de-duplicated).
        await asyncio.gather(
            self._publish(completed),
            self._advance(completed, current, spec, step.id, successors),
        )

    async def _advance(
        self,
        cause: Event,
        current: RunRecord,
        spec: WorkflowSpec,
        done: str,
        successors: list[str],
    ) -> None:
        """Request those of `successors` of the step `done` whose needs are all done. A
        join (a successor with other needs too) records this dependency once, then reads
        the others; a successor that needs only `done` is ready now."""
        others = {s: sorted(set(spec.step(s).needs) - {done}) for s in successors}
        joins = [s for s in successors if others[s]]
        runid = current.runid
        await asyncio.gather(*(self.store.record_dependency(runid, s, done) for s in joins))
        recorded = await asyncio.gather(
            *(self.store.dependencies_done(runid, s, others[s]) for s in joins)
        )
        ready = [s for s in successors if not others[s]] + [
            s for s, found in zip(joins, recorded, strict=True) if set(others[s]) <= found
        ]
        await asyncio.gather(*(self.request_step(cause, current, spec, s) for s in ready))

    async def _failed(
        self,
        cause: Event,
        record: RunRecord,
        spec: WorkflowSpec,
        key: AttemptKey,
        error: str,
        *,
        permanent: bool = False,
    ) -> None:
        step = spec.step(key.step)
        policy = spec.retry_of(step)
        current = await self.store.run(record.runid) or record
        will_retry = (
            not permanent
            and key.attempt < policy.max_attempts
            and current.status == "running"
            and current.generation == key.generation
        )
        next_at = (
            datetime.now(UTC) + timedelta(seconds=policy.delay_before(key.attempt + 1))
            if will_retry
            else None
        )
        log.warning("step attempt failed", step=step.id, attempt=key.attempt, error=error)
        failed = self._step_event(
            cause,
            ev.STEP_FAILED,
            key,
            step,
            error=error,
            will_retry=will_retry,
            next_attempt_at=next_at,
        )
        await self._publish(failed)
        if will_retry:
            await self.request_step(failed, current, spec, step.id, key.attempt + 1, next_at)
        elif current.generation == key.generation:
            # end_run changes only a running run, or replays exactly what it did before.
            attempts = f"{key.attempt} attempt{'s' if key.attempt > 1 else ''}"
            await self.end_run(
                failed,
                current,
                spec,
                "failed",
                step=step.id,
                reason=f"step {step.id!r} failed after {attempts}: {error}",
            )

    # -- moving the run along (also used by the run lifecycle) ------------------------------

    async def request_step(
        self,
        cause: Event,
        record: RunRecord,
        spec: WorkflowSpec,
        step_id: str,
        attempt: int = 1,
        not_before: datetime | None = None,
    ) -> None:
        """Request an attempt from the kind's owner; when the owner is a worker and none is
        running, say so (`wf.step.waiting`): the run waits for one until the step's timeout."""
        step = spec.step(step_id)
        key = AttemptKey(record.runid, step_id, record.generation, attempt)
        kind = await self.registry.kind(step.uses)
        owner = kind.service if kind else step.uses.split(".", 1)[0]
        requested = cause.child(
            type=ev.step_requested(owner),
            source=self.source,
            id=key.message_id,
            stepid=step_id,
            attempt=attempt,
            data=ev.StepRequested(
                step=step_id,
                uses=step.uses,
                attempt=attempt,
                generation=record.generation,
                not_before=not_before,
            ).model_dump(mode="json"),
        )
        await self._publish(requested)
        if step.uses in STEP_KINDS or (kind is not None and kind.origin != "worker"):
            return
        if await self.registry.live_workers(owner):
            return
        await self._publish(
            requested.child(
                type=ev.STEP_WAITING,
                source=self.source,
                id=f"{key.message_id}:waiting",
                data=ev.StepWaiting(
                    step=step_id,
                    generation=record.generation,
                    attempt=attempt,
                    uses=step.uses,
                    owner=owner,
                    timeout_s=spec.timeout_of(step),
                    message=f"waiting for a worker of {owner}.*",
                ).model_dump(mode="json"),
            )
        )

    async def watch_waiting(self, event: Event) -> float | None:
        """A `wf.step.waiting` attempt: done once a worker claimed it; failed (retried by
        the step's policy) when nobody did within its timeout. Seconds to look again."""
        waiting = parse_data(ev.StepWaiting, event)
        record = await self.store.run(event.runid or "")
        if record is None or record.status != "running" or record.generation != waiting.generation:
            return None
        key = AttemptKey(record.runid, waiting.step, waiting.generation, waiting.attempt)
        if await self.store.output(record.runid, waiting.step) is not None:
            return None
        left = event.time.timestamp() + waiting.timeout_s - time.time()
        if left > 0:
            return min(left, 5.0) if not await self.store.claim_of(key) else None
        # Nobody will run it any more: a worker starting later finds the claim given up.
        forever = self.settings.stream_max_age_s or 365 * 24 * 3600.0
        if not (await self.store.claim(key, GIVEN_UP, forever)).won:
            return None  # a worker took it after all
        spec = WorkflowSpec.model_validate(record.workflow)
        error = f"no worker of {waiting.owner}.* took the step within {waiting.timeout_s:g} s"
        await self._failed(event, record, spec, key, error)
        return None

    async def complete_if_done(self, cause: Event, record: RunRecord, spec: WorkflowSpec) -> None:
        """Complete the run when every step has an output (idempotent). Checking the sinks
        is enough: a step only runs once its needs are done, so a done sink means all its
        ancestors are done, and every step is a sink or an ancestor of one."""
        sinks = dag.sinks({s.id: s.needs for s in spec.steps})
        if not set(sinks) <= await self.store.done_steps(record.runid, sinks):
            return
        all_steps = [s.id for s in spec.steps]
        updated = await self.store.change_run(
            record.runid, expect=("running", "completed"), status="completed"
        )
        if updated is None:
            return
        outputs = await self.store.outputs(record.runid, all_steps)
        await self._publish(
            cause.child(
                type=ev.RUN_COMPLETED,
                source=self.source,
                id=f"{record.runid}:completed",
                stepid=None,
                attempt=None,
                data=ev.RunEnded(
                    name=spec.name, generation=updated.generation, outputs=outputs
                ).model_dump(mode="json"),
            )
        )

    async def end_run(
        self,
        cause: Event,
        record: RunRecord,
        spec: WorkflowSpec,
        status: Literal["failed", "cancelled"],
        *,
        step: str | None = None,
        reason: str,
    ) -> None:
        """Fail or cancel the run and skip the steps that had not started. Idempotent: a
        replay after a crash publishes the same events, which JetStream de-duplicates."""
        updated = await self.store.change_run(
            record.runid, expect=("running",), status=status, reason=reason
        )
        if updated is None:
            current = await self.store.run(record.runid)
            replay = current is not None and (
                current.status,
                current.reason,
                current.generation,
            ) == (status, reason, record.generation)
            if not replay:
                return
        event_type = ev.RUN_FAILED if status == "failed" else ev.RUN_CANCELLED
        ended = cause.child(
            type=event_type,
            source=self.source,
            id=f"{record.runid}:{status}:{record.generation}",
            stepid=None,
            attempt=None,
            data=ev.RunEnded(
                name=spec.name, generation=record.generation, step=step, reason=reason
            ).model_dump(mode="json"),
        )
        await self._publish(ended)
        done = await self.store.done_steps(record.runid, [s.id for s in spec.steps])
        started = await self.store.claimed_steps(record.runid, record.generation)
        for other in spec.steps:
            if other.id in done or other.id in started or other.id == step:
                continue
            await self._publish(
                ended.child(
                    type=ev.STEP_SKIPPED,
                    source=self.source,
                    id=f"{record.runid}:{other.id}:skipped:{record.generation}",
                    stepid=other.id,
                    data=ev.StepEnded(
                        step=other.id,
                        generation=record.generation,
                        uses=other.uses,
                        error=f"skipped: the run {status}",
                    ).model_dump(mode="json"),
                )
            )

    def _step_event(
        self, cause: Event, event_type: str, key: AttemptKey, step: StepSpec, **data: Any
    ) -> Event:
        """`wf.step.completed` or `wf.step.failed` of an attempt, with its deterministic id."""
        return cause.child(
            type=event_type,
            source=self.source,
            id=f"{key.message_id}:{event_type.rsplit('.', 1)[1]}",
            attempt=key.attempt,
            data=ev.StepEnded(
                step=step.id,
                generation=key.generation,
                uses=step.uses,
                service=self.service,
                **data,
            ).model_dump(mode="json"),
        )

    async def _publish(self, event: Event) -> None:
        await self.publisher.publish(event.type, event)


class _TimedOut(Exception):
    """The step ran past its timeout (not a TimeoutError its own code raised)."""


class _LogSender:
    """Publishes what an attempt logged through `ctx.log` (`wf.step.log`), the lines not
    sent yet each time; on a failure it tries again with the next ones (the step's
    outcome and its lease matter more than its log)."""

    def __init__(self, runtime: Choreography, cause: Event, key: AttemptKey, claim: Claim) -> None:
        self.runtime = runtime
        self.cause = cause
        self.key = key
        self.claim = claim
        self.lines: list[dict[str, Any]] = []
        """The attempt's `StepContext.lines`."""
        self.sent = 0

    async def send(self) -> None:
        lines = self.lines[self.sent :]
        if not lines:
            return
        key = self.key
        logged = self.cause.child(
            type=ev.STEP_LOG,
            source=self.runtime.source,
            id=f"{key.message_id}:log:{self.claim.takeovers}:{self.sent}",
            attempt=key.attempt,
            data=ev.StepLogged(step=key.step, generation=key.generation, lines=lines).model_dump(
                mode="json"
            ),
        )
        try:
            await self.runtime.publisher.publish(logged.type, logged)
        except Exception as exc:
            log.warning("step log lines not published yet", step=key.step, error=repr(exc))
            return
        self.sent += len(lines)
