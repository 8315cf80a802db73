"""Workflow events: their types (each also its subject) and the shape of their data.

Commands are imperative (`...requested`), facts past tense. Every event of a run carries
`runid` (and for a step `stepid` and `attempt`) in its envelope, and is derived from the
event that caused it, so a run's events form one causation tree.
"""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from shared.envelope import Event

RUN_REQUESTED = "wf.run.requested"
RUN_QUEUED = "wf.run.queued"
RUN_STARTED = "wf.run.started"
RUN_COMPLETED = "wf.run.completed"
RUN_FAILED = "wf.run.failed"
RUN_CANCEL_REQUESTED = "wf.run.cancel.requested"
RUN_CANCELLED = "wf.run.cancelled"
RUN_RETRY_REQUESTED = "wf.run.retry.requested"
STEP_STARTED = "wf.step.started"
STEP_COMPLETED = "wf.step.completed"
STEP_FAILED = "wf.step.failed"
STEP_SKIPPED = "wf.step.skipped"
STEP_WAITING = "wf.step.waiting"
STEP_LOG = "wf.step.log"

RUN_ENDED = (RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED)


def step_requested(service: str) -> str:
    """`wf.step.<service>.requested`: the owning service runs the step."""
    return f"wf.step.{service}.requested"


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RunRequested(_Data):
    workflow: dict[str, JsonValue]
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    version: int | None = None
    """The deployed version of the workflow (`choreo deploy`); None for a file's run."""
    schedule: dict[str, JsonValue] | None = None
    """The schedule fire that started the run: `{"name", "time"}`."""


def run_requested(
    workflow: dict[str, Any],
    inputs: dict[str, Any],
    runid: str,
    *,
    source: str,
    version: int | None = None,
    schedule: dict[str, JsonValue] | None = None,
) -> Event:
    """The `wf.run.requested` command of run `runid`; its id `<runid>:requested` makes a
    repeated request a JetStream duplicate."""
    return Event(
        id=f"{runid}:requested",
        type=RUN_REQUESTED,
        source=source,
        runid=runid,
        correlationid=runid,
        data=RunRequested(
            workflow=workflow, inputs=inputs, version=version, schedule=schedule
        ).model_dump(mode="json"),
    )


class RunStarted(_Data):
    name: str
    inputs: dict[str, JsonValue]
    steps: list[str]
    generation: int = 1


class RunEnded(_Data):
    """Data of `wf.run.completed`, `wf.run.failed` and `wf.run.cancelled`."""

    name: str
    generation: int = 1
    outputs: dict[str, JsonValue] = Field(default_factory=dict)
    step: str | None = None
    reason: str | None = None
    problems: list[str] = Field(default_factory=list)


class RunCommand(_Data):
    """Data of `wf.run.cancel.requested` and `wf.run.retry.requested` (the run is `runid`)."""

    reason: str | None = None


def run_command(event_type: str, runid: str, *, source: str, reason: str | None = None) -> Event:
    """`wf.run.cancel.requested` or `wf.run.retry.requested` for run `runid`."""
    return Event(
        type=event_type,
        source=source,
        runid=runid,
        correlationid=runid,
        data=RunCommand(reason=reason).model_dump(mode="json"),
    )


class StepRequested(_Data):
    step: str
    uses: str
    attempt: int = 1
    generation: int = 1
    """Attempts count from 1 again in each generation (`choreo retry` starts one)."""
    not_before: datetime | None = None


class StepStarted(_Data):
    step: str
    generation: int = 1
    uses: str
    service: str
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    takeovers: int = 0
    """How often this attempt was taken over from a holder that died while running it."""
    taken_from: str | None = None
    """The instance it was last taken over from (`<service>-<id>`)."""


class StepEnded(_Data):
    """Data of `wf.step.completed`, `wf.step.failed` and `wf.step.skipped`."""

    step: str
    generation: int = 1
    uses: str | None = None
    service: str | None = None
    output: dict[str, JsonValue] | None = None
    error: str | None = None
    duration_s: float | None = None
    will_retry: bool = False
    next_attempt_at: datetime | None = None


class StepWaiting(_Data):
    """Data of `wf.step.waiting`: the step's kind is run by a worker, and none is running.
    The step is taken as soon as one starts; after `timeout_s` the attempt fails."""

    step: str
    generation: int = 1
    attempt: int = 1
    uses: str
    owner: str
    timeout_s: float
    message: str


class StepLogged(_Data):
    """Data of `wf.step.log`: lines a step logged through `ctx.log`, in order."""

    step: str
    generation: int = 1
    lines: list[dict[str, JsonValue]]
