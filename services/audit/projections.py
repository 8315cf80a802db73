"""Rows projected from events (pure functions): workflow runs and steps from the `wf.*`
events, `business_events`, and the fraud verdicts (`fraud_scores`, `fraud_alerts`).

Events may arrive twice or out of order (a late `wf.step.started` after its `completed`).
Each update carries an order key; a row takes an update's state only when the key is at
least the row's. Request and start times merge regardless of order (the earliest wins).

    run:  generation, then requested < started < completed | failed | cancelled
    step: generation, then attempt, then requested < started < completed | failed;
          skipped ends its generation, whatever the attempt
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from pydantic import ValidationError

from shared.envelope import Envelope
from shared.fraud import FraudVerdict
from shared.lake import Group, parse_key
from shared.subjects import FRAUD_ALERT, FRAUD_SCORED, OBJECT_WRITTEN
from shared.workflow import events as ev

log = structlog.get_logger(__name__)

_RUN_RANK = {
    ev.RUN_REQUESTED: 0,
    ev.RUN_STARTED: 1,
    ev.RUN_COMPLETED: 2,
    ev.RUN_FAILED: 2,
    ev.RUN_CANCELLED: 2,
}
_RUN_STATUS = {
    ev.RUN_REQUESTED: "requested",
    ev.RUN_STARTED: "running",
    ev.RUN_COMPLETED: "completed",
    ev.RUN_FAILED: "failed",
    ev.RUN_CANCELLED: "cancelled",
}
_STEP_RANK = {"requested": 0, ev.STEP_STARTED: 1, ev.STEP_COMPLETED: 2, ev.STEP_FAILED: 2}
_SKIPPED_ATTEMPT = 99_999_999  # a skip ends the generation: later than any attempt


@dataclass(frozen=True)
class RunUpdate:
    runid: str
    status: str
    generation: int
    order_key: int
    name: str | None = None
    inputs: Any = None
    outputs: Any = None
    reason: str | None = None
    failed_step: str | None = None
    problems: Any = None
    requested_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True)
class StepUpdate:
    runid: str
    stepid: str
    status: str
    generation: int
    attempt: int
    order_key: int
    uses: str | None = None
    service: str | None = None
    inputs: Any = None
    output: Any = None
    error: str | None = None
    requested_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None


def run_update(event: Envelope) -> RunUpdate | None:
    kind, runid, data, time = event["type"], event.get("runid"), event.get("data"), event["time"]
    if kind not in _RUN_RANK or not runid or not isinstance(data, dict):
        return None
    generation = int(data.get("generation") or 1)
    ended = _RUN_RANK[kind] == 2
    workflow = data.get("workflow")
    name = data.get("name") or (workflow.get("name") if isinstance(workflow, dict) else None)
    return RunUpdate(
        runid=runid,
        status=_RUN_STATUS[kind],
        generation=generation,
        order_key=generation * 10 + _RUN_RANK[kind],
        name=name if isinstance(name, str) else None,
        inputs=data.get("inputs"),
        outputs=data.get("outputs") if kind == ev.RUN_COMPLETED else None,
        reason=data.get("reason"),
        failed_step=data.get("step") if kind == ev.RUN_FAILED else None,
        problems=data.get("problems") or None,
        requested_at=time if kind == ev.RUN_REQUESTED else None,
        started_at=time if kind == ev.RUN_STARTED else None,
        ended_at=time if ended else None,
    )


def step_update(event: Envelope) -> StepUpdate | None:
    kind = _step_kind(event["type"])
    runid, data, time = event.get("runid"), event.get("data"), event["time"]
    if kind is None or not runid or not isinstance(data, dict):
        return None
    step = data.get("step")
    if not isinstance(step, str):
        return None
    generation = int(data.get("generation") or 1)
    attempt = int(data.get("attempt") or event.get("attempt") or 0)
    if kind == ev.STEP_SKIPPED:
        status, order_attempt, rank = "skipped", _SKIPPED_ATTEMPT, 2
    elif kind == ev.STEP_FAILED and data.get("will_retry"):
        status, order_attempt, rank = "retrying", attempt, 2
    else:
        status = {
            "requested": "requested",
            ev.STEP_STARTED: "running",
            ev.STEP_COMPLETED: "completed",
            ev.STEP_FAILED: "failed",
        }[kind]
        order_attempt, rank = attempt, _STEP_RANK[kind]
    ended = kind in (ev.STEP_COMPLETED, ev.STEP_FAILED, ev.STEP_SKIPPED)
    return StepUpdate(
        runid=runid,
        stepid=step,
        status=status,
        generation=generation,
        attempt=attempt,
        order_key=generation * 10**9 + order_attempt * 10 + rank,
        uses=data.get("uses"),
        service=data.get("service"),
        inputs=data.get("inputs") if kind == ev.STEP_STARTED else None,
        output=data.get("output"),
        error=data.get("error"),
        requested_at=time if kind == "requested" else None,
        started_at=time if kind == ev.STEP_STARTED else None,
        ended_at=time if ended else None,
        duration_s=data.get("duration_s"),
    )


@dataclass(frozen=True)
class BusinessRow:
    """A `business_events` row (columns in table order, but for received_at)."""

    id: str
    company_id: str
    event_type: str
    payload: Any
    occurred_at: datetime | None
    time: datetime


BUSINESS_EVENT = "business_event"


def business_row(event: Envelope) -> BusinessRow | None:
    """The business_events row of a `business_event` (ingest validated its schema)."""
    data = event.get("data")
    if event["type"] != BUSINESS_EVENT or not isinstance(data, dict):
        return None
    occurred = data.get("occurred_at")
    return BusinessRow(
        id=event["id"],
        company_id=str(data.get("company_id")),
        event_type=str(data.get("event_type")),
        payload=data.get("payload") or {},
        occurred_at=datetime.fromisoformat(occurred) if isinstance(occurred, str) else None,
        time=event["time"],
    )


TRANSACTION = "transaction"
FRAUD_TYPES = (FRAUD_SCORED, FRAUD_ALERT)
"""The fraud service's envelope types, named like the subjects they travel on."""


@dataclass(frozen=True)
class FraudRow:
    """A `fraud_scores` row (`type` fraud.scored) or a `fraud_alerts` row (fraud.alert): the
    verdict, and the event that carried it (its id and time are `scored_event_id` and
    `scored_at`, or `id` and `created_at`)."""

    type: str
    event_id: str
    event_time: datetime
    verdict: FraudVerdict


def fraud_row(event: Envelope) -> FraudRow | None:
    """The row of a `fraud.scored` or `fraud.alert` event; None for other types and for
    data that breaks the contract (logged: the event itself is still audited)."""
    kind = event["type"]
    if kind not in FRAUD_TYPES:
        return None
    try:
        verdict = FraudVerdict.model_validate(event.get("data"))
    except ValidationError as exc:
        log.warning(
            "fraud verdict not projected: unexpected data",
            event_id=event["id"],
            type=kind,
            errors=exc.errors(include_url=False, include_context=False, include_input=False),
        )
        return None
    return FraudRow(kind, event["id"], event["time"], verdict)


def _step_kind(event_type: str) -> str | None:
    if event_type.startswith("wf.step.") and event_type.endswith(".requested"):
        return "requested"
    if event_type in (ev.STEP_STARTED, ev.STEP_COMPLETED, ev.STEP_FAILED, ev.STEP_SKIPPED):
        return event_type
    return None


def causation_order(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events as a depth-first walk of their causation tree, siblings by time; each gets
    `depth` (its distance from the root) and `after_ms` (time since its cause)."""
    by_id = {e["id"]: e for e in events}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for event in events:
        parent = event.get("causationid")
        children.setdefault(parent if parent in by_id else None, []).append(event)
    ordered: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for child in sorted(children.get(parent, []), key=lambda e: (e["time"], e["id"])):
            cause = by_id.get(child.get("causationid") or "")
            after = (child["time"] - cause["time"]).total_seconds() * 1000 if cause else None
            ordered.append({**child, "depth": depth, "after_ms": after})
            walk(child["id"], depth + 1)

    walk(None, 0)
    return ordered


@dataclass(frozen=True)
class LakeRow:
    """A `lake_objects` row: an object of the raw lake the lander wrote, with the group
    (event type and UTC date) and the DATA stream sequences it holds."""

    key: str
    bucket: str
    group: Group
    first_seq: int
    last_seq: int


def lake_row(event: Envelope) -> LakeRow | None:
    """The row of a `lake.object.written` the lander announced; None for other events and
    for the objects of steps and uploads (their keys hold no stream sequences)."""
    if event["type"] != OBJECT_WRITTEN:
        return None
    data = event.get("data")
    if not isinstance(data, dict) or data.get("by") != "lander":
        return None
    key, bucket = data.get("key"), data.get("bucket")
    if not isinstance(key, str):
        return None
    parsed = parse_key(key)
    if parsed is None or not isinstance(bucket, str):
        return None
    group, first, last = parsed
    return LakeRow(key, bucket, group, first, last)
