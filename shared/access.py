"""Who may do what, in one table: for every identity (the five services, the console, the
Python workers and the CLI's `admin`), the NATS subjects it may use, the lake buckets it may
read and write, and the durable consumers it owns.

The embedded stack (`choreo up`), the deployment files (`deploy/render.py`: nats.conf and
MinIO policies for compose and Kubernetes) and the bench read `ACCESS`, so every way of
running Choreo grants the same (docs/reference/guarantees.md, least privilege).
"""

import json
from dataclasses import dataclass, field
from typing import Literal

from shared.lake import layer_buckets
from shared.settings import Settings
from shared.subjects import (
    CONSUMED_SUBJECTS,
    DEPLOYMENTS_BUCKET,
    DLQ,
    DLQ_STATE_BUCKET,
    FRAUD_STATE_BUCKET,
    NOTIFY,
    SCHEDULE_STATE_BUCKET,
    SERVICES,
    STREAMS,
    dlq_subject,
    object_store_subjects,
)

ADMIN = "admin"
"""The CLI: every NATS subject, every bucket."""
CONSOLE = "console"
"""The web console: not an event service (it consumes no stream, owns no step), a reader
that follows `wf.>` live and asks for runs, cancellations and retries like the CLI."""
WORKERS = "workers"
"""Python workers (`choreo worker`): the embedded stack's identity for them, and the
permissions of every worker's own (`choreo credentials worker NAME`)."""

# -- durable consumers -----------------------------------------------------------------------
# A durable is a position in a stream shared by whoever consumes under its name: two parts
# that used one name by mistake would split each other's messages. Each is named here once.

INGEST_IN = "ingest-in"
"""DATA_IN: raw events published to NATS, checked and re-published to DATA."""
INGEST_TRIGGERS = "ingest-triggers"
"""DATA: events that may start a deployed workflow (event triggers)."""
INGEST_OBJECT_TRIGGERS = "ingest-object-triggers"
"""LAKE: objects written to the lake that may start a deployed workflow."""
INGEST_SCHEDULES = "ingest-schedules"
"""SCHEDULES: the fires of the schedules."""
INGEST_RUNS = "ingest-runs"
INGEST_QUEUED = "ingest-queued"
INGEST_CANCELS = "ingest-cancels"
INGEST_RETRIES = "ingest-retries"
INGEST_WAITING = "ingest-waiting"
"""WORKFLOW: run requests, run requests waiting for a max_concurrent slot, cancellations,
retries, steps waiting for a worker."""
STORE_LANDER = "store-lander"
"""DATA: every event, batched into lake objects."""
AUDIT = "audit"
"""DATA, WORKFLOW, FRAUD and LAKE: every event, one row each (one durable per stream)."""
FRAUD_PARTITION = "fraud-p{partition}-of-{partitions}"
"""DATA: transactions and labels, one durable per partition of the cards."""
STEPS = "{service}-steps"
"""WORKFLOW: the step requests of the kinds a service owns, shared by its replicas."""


def fraud_durable(partition: int, partitions: int) -> str:
    """The durable consumer of one fraud partition (`fraud-p<i>-of-<P>`)."""
    return FRAUD_PARTITION.format(partition=partition, partitions=partitions)


def steps_durable(service: str) -> str:
    """The durable consumer of a service's step requests (`<service>-steps`)."""
    return STEPS.format(service=service)


# -- NATS ------------------------------------------------------------------------------------


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
    """The NATS subjects one identity may publish and subscribe to."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...] = ()
    # JetStream needs these for every client: the API (stream info, consumer create,
    # pull requests), acknowledgements, replies on the client's inbox, and writes to the
    # workflow run-state KV bucket (shared.workflow.state.BUCKET).
    jetstream: tuple[str, ...] = field(
        default=("$JS.API.>", "$JS.ACK.>", "_INBOX.>", "$KV.choreo_runs.>")
    )
    # The identity's own JetStream buckets: internal, so not documented as event subjects.
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


# -- S3 --------------------------------------------------------------------------------------

Layer = Literal["raw", "staging", "curated"]
"""A layer of the lake (shared.lake.LAYERS); its bucket's name is a setting
(`CHOREO_BUCKET_<LAYER>`)."""
EVERY_LAYER: tuple[Layer, ...] = ("raw", "staging", "curated")


@dataclass(frozen=True)
class BucketAccess:
    """The lake layers an identity may read (and list) and write; `admin`: every bucket,
    and creating them (the store owns the buckets)."""

    read: tuple[Layer, ...] = ()
    write: tuple[Layer, ...] = ()
    admin: bool = False

    def actions(self, settings: Settings) -> list[str]:
        """As SeaweedFS identities spell them (`Admin`, `Read:<bucket>`, ...);
        deploy/render.py turns them into IAM policies for MinIO."""
        if self.admin:
            return ["Admin", "Read", "Write", "List", "Tagging"]

        buckets = layer_buckets(settings)

        def bucket(layer: Layer) -> str:
            return buckets[layer]

        return [
            *(f"{action}:{bucket(layer)}" for layer in self.read for action in ("Read", "List")),
            *(f"Write:{bucket(layer)}" for layer in self.write),
        ]


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """What one identity may do."""

    nats: Permissions | None
    """None: every subject (the CLI's admin)."""
    s3: BucketAccess | None = None
    """None: no S3 key at all."""
    durables: tuple[str, ...] = ()
    """The durable consumers it owns: names, or templates of them (`{partition}`)."""


# Reading the lake and writing the layers that steps write (ctx.lake, a step's outputs).
_LAKE_STEPS = BucketAccess(read=EVERY_LAYER, write=("staging", "curated"))

# Every service publishes workflow events: a step's completion may request a successor
# owned by any service.
ACCESS: dict[str, Access] = {
    ADMIN: Access(nats=None, s3=BucketAccess(admin=True)),
    "ingest": Access(
        nats=Permissions(
            publish=(
                "data.*",
                "wf.>",
                dlq_subject("ingest"),
                "schedule.def.*",
                # Replaying a dead letter over HTTP (POST /v1/dlq/{id}/replay) publishes it
                # to its original subject: any subject a service consumes, and no other
                # (the route refuses the rest). Beyond what ingest publishes anyway, that
                # is `fraud.>` (audit's), `lake.>` and `schedule.fire.*` (ingest's own
                # triggers and schedules).
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
        s3=BucketAccess(read=("raw",), write=("raw",)),
        durables=(
            INGEST_IN,
            INGEST_TRIGGERS,
            INGEST_OBJECT_TRIGGERS,
            INGEST_SCHEDULES,
            INGEST_RUNS,
            INGEST_QUEUED,
            INGEST_CANCELS,
            INGEST_RETRIES,
            INGEST_WAITING,
            steps_durable("ingest"),
        ),
    ),
    "transform": Access(
        nats=Permissions(publish=("wf.>", dlq_subject("transform"))),
        s3=_LAKE_STEPS,
        durables=(steps_durable("transform"),),
    ),
    "store": Access(
        nats=Permissions(publish=("wf.>", dlq_subject("store"), "lake.>")),
        s3=BucketAccess(admin=True),
        durables=(STORE_LANDER, steps_durable("store")),
    ),
    "audit": Access(
        nats=Permissions(publish=("wf.>", dlq_subject("audit"), *NOTIFY.subjects)),
        durables=(AUDIT, steps_durable("audit")),
    ),
    "fraud": Access(
        nats=Permissions(
            publish=("fraud.>", "wf.>", dlq_subject("fraud")),
            buckets=object_store_subjects(FRAUD_STATE_BUCKET),
        ),
        s3=_LAKE_STEPS,
        durables=(FRAUD_PARTITION, steps_durable("fraud")),
    ),
    CONSOLE: Access(
        nats=Permissions(
            publish=("wf.run.requested", "wf.run.cancel.requested", "wf.run.retry.requested"),
            subscribe=("wf.>",),
            # The JetStream API (stream and consumer info, publishing to WORKFLOW) and its
            # replies; unlike the services, no write to the run-state bucket.
            jetstream=("$JS.API.>", "_INBOX.>"),
        ),
    ),
    WORKERS: Access(
        nats=Permissions(
            # Its steps' events, and the requests of their successors, which any service
            # may own.
            publish=("wf.>",),
            # Announcing its kinds and its heartbeat; the run state is in the default set.
            buckets=("$KV.choreo_steps.>",),
        ),
        s3=_LAKE_STEPS,
    ),
}


def permissions(identity: str) -> Permissions:
    """The NATS permissions of an identity of the table other than admin."""
    found = ACCESS[identity].nats
    if found is None:
        raise ValueError(f"{identity!r} may use every subject: it has no permission list")
    return found


SERVICE_PERMISSIONS: dict[str, Permissions] = {s: permissions(s) for s in SERVICES}
"""The five services' NATS permissions, read from `ACCESS`."""
