"""Every subject, stream and durable consumer in Choreo, in one place.

Services meet only through these names (docs/reference/subjects-and-streams.md). Each
stream's subjects are disjoint: `data.*` holds validated events (one token after `data.`),
`data.in.>` the unvalidated entry point that ingest checks, so the two never overlap.
"""

import json
import re
from dataclasses import dataclass, field

SERVICES = ("ingest", "transform", "store", "audit", "fraud")

EVENT_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""An event type is one NATS subject token: lower-case letters, digits and `_`."""

DATA_IN_PREFIX = "data.in."
AUDIT_EVENT_LOOKUP = "audit.events.get"
"""Request-reply (core NATS): `{"id": ...}` -> the audit record of that event."""
FRAUD_SCORED = "fraud.scored"
FRAUD_ALERT = "fraud.alert"
FRAUD_SHADOW = "fraud.shadow"  # a candidate model's verdict, recorded, never alerting
FRAUD_STATE_BUCKET = "choreo_fraud"
DEPLOYMENTS_BUCKET = "choreo_workflows"
"""JetStream KV of the deployed workflows (shared/workflow/deployments.py)."""
DLQ_STATE_BUCKET = "choreo_dlq"
"""JetStream KV of the dead letters replayed (shared/dlq.py)."""
SCHEDULE_STATE_BUCKET = "choreo_schedules"
"""JetStream KV of the schedules' state: latest fire and run, skipped fires."""
"""JetStream object store of the fraud scorer's state snapshots (services/fraud/snapshot.py)."""


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


def destructive_api(streams: tuple[str, ...]) -> tuple[str, ...]:
    """JetStream API subjects that delete or purge a stream, or delete a message of it:
    no service needs them on Choreo's streams, so every service user is denied them (the
    CLI's admin user keeps them)."""
    return tuple(
        f"$JS.API.{action}.{stream}"
        for stream in streams
        for action in ("STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE")
    )


# The event streams and the workflow run-state KV bucket's stream.
PROTECTED_STREAMS = (*(spec.name for spec in STREAMS), "KV_choreo_runs")


@dataclass(frozen=True)
class Permissions:
    """The NATS subjects one service's user may publish and subscribe to."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...] = ()
    # JetStream needs these for every client: the API (stream info, consumer create,
    # pull requests), acknowledgements, replies on the client's inbox, and writes to the
    # workflow run-state KV bucket (shared.workflow.state.BUCKET).
    jetstream: tuple[str, ...] = field(
        default=("$JS.API.>", "$JS.ACK.>", "_INBOX.>", "$KV.choreo_runs.>")
    )
    # The service's own JetStream buckets: internal, so not documented as event subjects.
    buckets: tuple[str, ...] = ()
    # Protected streams this user may purge all the same (the others stay denied).
    purge: tuple[str, ...] = ()

    def publish_allow(self) -> list[str]:
        return [*self.publish, *self.jetstream, *self.buckets]

    def publish_deny(self) -> list[str]:
        """Denied even though `$JS.API.>` is allowed: deny wins in NATS."""
        allowed = {f"$JS.API.STREAM.PURGE.{stream}" for stream in self.purge}
        return [s for s in destructive_api(PROTECTED_STREAMS) if s not in allowed]

    def subscribe_allow(self) -> list[str]:
        return [*self.subscribe, "_INBOX.>"]

    def nats_conf_user(self, user: str, password: str) -> str:
        """The user's entry in nats.conf's `authorization.users`; `password` as it is
        written there (a quoted string, or an unquoted `$VARIABLE`)."""

        def listed(subjects: list[str]) -> str:
            return "[" + ", ".join(json.dumps(subject) for subject in subjects) + "]"

        return (
            f"{{user: {json.dumps(user)}, password: {password}, permissions: {{publish: "
            f"{{allow: {listed(self.publish_allow())}, deny: {listed(self.publish_deny())}}}, "
            f"subscribe: {listed(self.subscribe_allow())}}}}}"
        )


# Every service publishes workflow events: a step's completion may request a successor
# owned by any service.
SERVICE_PERMISSIONS: dict[str, Permissions] = {
    "ingest": Permissions(
        publish=(
            "data.*",
            "wf.>",
            dlq_subject("ingest"),
            AUDIT_EVENT_LOOKUP,
            "schedule.def.*",
            # Replaying a dead letter over HTTP (POST /v1/dlq/{id}/replay) publishes it to
            # its original subject: any subject a service consumes, and no other (the
            # route refuses the rest). Beyond what ingest publishes anyway, that is
            # `fraud.>` (audit's), `lake.>` and `schedule.fire.*` (ingest's own triggers
            # and schedules).
            *(s for s in CONSUMED_SUBJECTS if s not in ("data.*", "wf.>")),
        ),
        # `DELETE /v1/dlq?older_than=`: dead letters expire only when purged.
        purge=(DLQ.name,),
        # Schedule state, replayed dead letters, and the run slots of max_concurrent
        # (active.<workflow> in the deployments bucket).
        buckets=(
            f"$KV.{SCHEDULE_STATE_BUCKET}.>",
            f"$KV.{DLQ_STATE_BUCKET}.>",
            f"$KV.{DEPLOYMENTS_BUCKET}.>",
        ),
    ),
    "transform": Permissions(publish=("wf.>", dlq_subject("transform"))),
    "store": Permissions(publish=("wf.>", dlq_subject("store"), "lake.>")),
    "audit": Permissions(
        publish=("wf.>", dlq_subject("audit"), *NOTIFY.subjects),
        subscribe=(AUDIT_EVENT_LOOKUP,),
    ),
    "fraud": Permissions(
        publish=("fraud.>", "wf.>", dlq_subject("fraud")),
        buckets=object_store_subjects(FRAUD_STATE_BUCKET),
    ),
}


CONSOLE = "console"
"""The web console: not an event service (it consumes no stream, owns no step), a reader
that follows `wf.>` live and asks for runs, cancellations and retries like the CLI."""
CONSOLE_PERMISSIONS = Permissions(
    publish=("wf.run.requested", "wf.run.cancel.requested", "wf.run.retry.requested"),
    subscribe=("wf.>",),
    # The JetStream API (stream and consumer info, publishing to WORKFLOW) and its replies;
    # unlike the services, no write to the run-state bucket.
    jetstream=("$JS.API.>", "_INBOX.>"),
)


WORKERS = "workers"
"""Python workers (`choreo worker`): the embedded stack's identity for them, and the
permissions of every worker's own (`choreo credentials worker NAME`)."""
WORKER_PERMISSIONS = Permissions(
    # Its steps' events, and the requests of their successors, which any service may own.
    publish=("wf.>",),
    # Announcing its kinds and its heartbeat; the run state is in the default jetstream set.
    buckets=("$KV.choreo_steps.>",),
)
