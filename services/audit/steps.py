"""The step kinds the audit service runs: `audit.log` and `notify.publish`."""

from collections.abc import Callable

from services.audit.ports import EventStore
from shared.envelope import Event
from shared.jetstream import EventPublisher
from shared.subjects import NOTIFY, stream_for
from shared.workflow.steps import StepContext, StepFailed, StepOutput, StepRegistry


def audit_steps(
    steps: StepRegistry, store: Callable[[], EventStore], publisher: EventPublisher
) -> None:
    """Register audit's step kinds on `steps`."""

    @steps.kind("audit.log")
    async def log_message(ctx: StepContext) -> StepOutput:
        """Write `message` (and `details`) to the audit_log table, once per step."""
        message = ctx.params["message"]
        if not isinstance(message, str):
            raise StepFailed(f"with.message must be a string, got {type(message).__name__}")
        await store().log_message(
            ctx.idempotency_key, ctx.runid, ctx.step, message, ctx.params.get("details")
        )
        ctx.log.info("logged to the audit trail", event_id=ctx.idempotency_key)
        return {"event_id": ctx.idempotency_key}

    @steps.kind("notify.publish")
    async def notify(ctx: StepContext) -> StepOutput:
        """Publish `data` on `subject` (kept in the NOTIFY stream); output its sequence."""
        subject = ctx.params["subject"]
        if not isinstance(subject, str) or _stream(subject) != NOTIFY.name:
            raise StepFailed(
                f"with.subject {subject!r} must be under {' or '.join(NOTIFY.subjects)}"
            )
        event = Event(
            # The step's key: a second attempt re-publishes the same id, dropped by JetStream.
            id=ctx.idempotency_key,
            type="notify.published",
            source="choreo/audit",
            subject=subject,
            data=ctx.params["data"],
            runid=ctx.runid,
            stepid=ctx.step,
        )
        ack = await publisher.publish(subject, event)
        ctx.log.info("published", subject=subject, seq=ack.seq if ack is not None else None)
        return {"subject": subject, "seq": ack.seq if ack is not None else None}


def _stream(subject: str) -> str | None:
    try:
        return stream_for(subject).name
    except ValueError:
        return None
