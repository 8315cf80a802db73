"""Every subject and stream in Choreo, in one place (who may use them: shared/access.py).

Services meet only through these names (docs/reference/subjects-and-streams.md). Each
stream's subjects are disjoint: `data.*` holds validated events (one token after `data.`),
`data.in.>` the unvalidated entry point that ingest checks, so the two never overlap.
"""

import re
from dataclasses import dataclass
from functools import lru_cache

SERVICES = ("ingest", "transform", "store", "audit", "fraud")

EVENT_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""An event type is one NATS subject token: lower-case letters, digits and `_`."""

DATA_IN_PREFIX = "data.in."
FRAUD_SCORED = "fraud.scored"
FRAUD_ALERT = "fraud.alert"
FRAUD_SHADOW = "fraud.shadow"  # a candidate model's verdict, recorded, never alerting
FRAUD_STATE_BUCKET = "choreo_fraud"
"""JetStream object store of the fraud scorer's state snapshots (services/fraud/snapshot.py)."""
DEPLOYMENTS_BUCKET = "choreo_workflows"
"""JetStream KV of the deployed workflows (shared/workflow/deployments.py)."""
DLQ_STATE_BUCKET = "choreo_dlq"
"""JetStream KV of the dead letters replayed (shared/dlq.py)."""
SCHEDULE_STATE_BUCKET = "choreo_schedules"
"""JetStream KV of the schedules' state: latest fire and run, skipped fires."""


def data_subject(event_type: str) -> str:
    """Where validated events of `event_type` are published: `data.<type>`."""
    if not EVENT_TYPE_PATTERN.fullmatch(event_type) or event_type == "in":
        raise ValueError(f"invalid event type {event_type!r}: use [a-z][a-z0-9_]*, not 'in'")
    return f"data.{event_type}"


def dlq_subject(service: str) -> str:
    """Where a service dead-letters what it could not process: `dlq.<service>`."""
    return f"dlq.{service}"


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream Choreo needs; created or updated when any service starts."""

    name: str
    subjects: tuple[str, ...]
    description: str
    schedules: bool = False
    """Message schedules on (nats-server 2.14+): the server fires what it holds, so
    nothing in it expires by age; each subject keeps its latest `SCHEDULE_FIRES_KEPT`."""


DATA = StreamSpec("DATA", ("data.*",), "validated events, one subject per event type")
DATA_IN = StreamSpec("DATA_IN", ("data.in.>",), "raw events published straight to NATS")
WORKFLOW = StreamSpec("WORKFLOW", ("wf.>",), "workflow runs and steps")
FRAUD = StreamSpec("FRAUD", ("fraud.>",), "fraud scores and alerts")
DLQ = StreamSpec("DLQ", ("dlq.>",), "messages a service gave up on, with the error")
NOTIFY = StreamSpec(
    "NOTIFY", ("notify.>", "reports.>"), "notifications published by workflows (notify.publish)"
)

LAKE = StreamSpec("LAKE", ("lake.>",), "an event per object written to the lake")
OBJECT_WRITTEN = "lake.object.written"

SCHEDULES = StreamSpec(
    "SCHEDULES",
    ("schedule.>",),
    "schedule definitions (schedule.def.<name>) and their fires (schedule.fire.<name>)",
    schedules=True,
)
SCHEDULE_FIRES_KEPT = 1_000

SCHEDULE_FIRE_PREFIX = "schedule.fire."

STREAMS: tuple[StreamSpec, ...] = (DATA, DATA_IN, WORKFLOW, FRAUD, DLQ, NOTIFY, SCHEDULES, LAKE)

CONSUMED_SUBJECTS: tuple[str, ...] = (
    *DATA.subjects,
    *DATA_IN.subjects,
    *WORKFLOW.subjects,
    *FRAUD.subjects,
    *LAKE.subjects,
    f"{SCHEDULE_FIRE_PREFIX}*",
)
"""Every subject a service consumes from a stream, so every subject a dead letter comes
from, and all that replaying one publishes to (tests/unit/test_subjects.py checks it
against the services' subscribers)."""


@lru_cache(maxsize=1024)  # asked on every publish, of a service's few subjects mostly
def stream_for(subject: str) -> StreamSpec:
    """The stream that stores `subject` (ValueError when none does)."""
    tokens = subject.split(".")
    for spec in STREAMS:
        if any(_matches(pattern.split("."), tokens) for pattern in spec.subjects):
            return spec
    raise ValueError(f"no Choreo stream stores subject {subject!r}")


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a subscription to `pattern` (with `*` and `>`) receives `subject`."""
    return _matches(pattern.split("."), subject.split("."))


def _matches(pattern: list[str], tokens: list[str]) -> bool:
    """NATS subject matching: `*` is one token, a final `>` one or more."""
    for i, part in enumerate(pattern):
        if part == ">":
            return len(tokens) > i
        if i >= len(tokens) or (part != "*" and part != tokens[i]):
            return False
    return len(tokens) == len(pattern)


def object_store_subjects(bucket: str) -> tuple[str, ...]:
    """What a client publishes to use a JetStream object store: chunks and metadata
    (`$O.<bucket>.>`), and flow-control replies of the ordered consumer that reads an
    object back (`$JS.FC.OBJ_<bucket>.>`, answered once an object spans many chunks)."""
    return (f"$O.{bucket}.>", f"$JS.FC.OBJ_{bucket}.>")
