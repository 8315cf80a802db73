"""The transform service's streaming Pathway pipelines, kept up to date as events arrive.

- `company_analytics`: per company_id and event_type of `data.business_event`, the event
  count and the first and last `occurred_at` (the envelope's `time` when the event has
  none); one more row per company with event_type `*` sums all of its types.
- `sales_windows`: revenue, quantity and sale count per region of `data.sale`, in 1-minute
  tumbling windows (`window_type` = `tumbling`) and 5-minute windows sliding by 1 minute
  (`sliding`), on the envelope's `time`. A window takes late events until `LATE_CUTOFF`
  (10 minutes) after its end, then is frozen (so the engine can forget it).

Both are PostgreSQL tables in the transform service's own database, created at start
(IF NOT EXISTS) and written by Pathway's PostgreSQL connector in snapshot mode: an upsert
by primary key per change, so a replayed change rewrites the same row.

How events get in. `pw.io.nats.read` is not used: it cannot authenticate (credentials in
its URL are not sent: nats-server logs "authentication error"), and every Choreo service
has its own NATS user. A `pw.io.python.ConnectorSubject` reads each subject with nats-py
instead (`reader.StreamReader`): an ephemeral pull consumer without acks, positioned at a stream
sequence, needing only the `$JS.API.>`/`_INBOX.>` permissions the transform user has (an
ordered push consumer would also need to publish flow-control replies to `$JS.FC.>`).

Restart safety: replay from a recorded stream position, recorded by Pathway persistence.
After each fetched batch the subject reports the batch's last stream sequence as its
offset and commits, so a minibatch is exactly one batch. Pathway persistence
(`CHOREO_TRANSFORM_STATE_DIR`) snapshots the pipeline's input and those offsets together;
after a crash it restores the snapshot and seeks the subject to the recorded sequence,
and reading resumes right after it. Each event is counted once, whatever the moment of the
crash: the position and the state it produced are saved atomically, so there is nothing to
acknowledge and no durable consumer. (Acknowledging after processing, the alternative,
would re-count events redelivered between a checkpoint and its ack.) Costs: Pathway's
free licence allows only the PERSISTING mode, which logs every input row (30-40 bytes
each here, compressed) and replays the log at start, so the state directory and the restart
time grow with the events processed; OPERATOR_PERSISTING (operator state only) needs a
licence key. Losing the state directory means recomputing from the stream, which holds
`stream_max_age_s` of events.

Process: the pipelines run in a child process, `python -m services.transform.streaming`
(`__main__.py`; config as JSON on stdin), started and supervised by
`supervisor.StreamingSupervisor` (restarted with backoff if it dies). Pathway's graph is
global to a process, its engine takes every CPU, and SIGTERM shuts it down gracefully; the
service process never imports Pathway. The child reports progress as JSON lines on
stdout, which become the metrics `choreo_transform_stream_lag_seconds` (when the newest
processed event was output: now - its envelope time), `choreo_transform_stream_pending`
(messages of the subject not read yet), `choreo_transform_stream_skipped` (events that are
not valid, counted and logged) and `choreo_transform_stream_restarts`.
"""

import asyncio
import json
import os
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg
import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import ValidationError

from services.transform.pathway.engine import pathway_threads
from services.transform.streaming.reader import StreamReader
from services.transform.streaming.rows import BUSINESS_EVENT, ROW_PARSERS, SALE, as_utc
from shared.envelope import Event
from shared.logs import LogFormat
from shared.settings import Settings
from shared.subjects import DATA, data_subject

log = structlog.get_logger(__name__)

TOTAL_EVENT_TYPE = "*"

TABLES_SQL = f"""
CREATE TABLE IF NOT EXISTS company_analytics (
    company_id text NOT NULL,
    event_type text NOT NULL,
    events bigint NOT NULL,
    first_occurred_at timestamptz NOT NULL,
    last_occurred_at timestamptz NOT NULL,
    PRIMARY KEY (company_id, event_type)
);
COMMENT ON COLUMN company_analytics.event_type IS
    'the business event type; ''{TOTAL_EVENT_TYPE}'' for all types of the company';
CREATE TABLE IF NOT EXISTS sales_windows (
    window_type text NOT NULL,
    region text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    sales bigint NOT NULL,
    quantity bigint NOT NULL,
    revenue double precision NOT NULL,
    PRIMARY KEY (window_type, region, window_start)
);
COMMENT ON COLUMN sales_windows.window_type IS
    'tumbling (1 minute) or sliding (5 minutes, every minute), on the event time';
"""

TUMBLING = timedelta(minutes=1)
SLIDING = timedelta(minutes=5)
SLIDING_HOP = timedelta(minutes=1)
LATE_CUTOFF = timedelta(minutes=10)

BACKLOG_BATCHES = 10


@dataclass(frozen=True)
class StreamingConfig:
    """What the child process needs; JSON on its stdin (it holds secrets: never argv)."""

    nats_servers: tuple[str, ...]
    database_url: str
    state_dir: str
    nats_user: str | None = None
    nats_password: str | None = None
    stream: str = DATA.name
    fetch_batch: int = 1000
    snapshot_interval_ms: int = 1000
    log_level: str = "INFO"
    log_format: LogFormat = "auto"

    @classmethod
    def from_settings(
        cls, settings: Settings, *, database_url: str, state_dir: Path
    ) -> "StreamingConfig":
        password = settings.nats_password
        return cls(
            nats_servers=tuple(settings.nats_servers),
            nats_user=settings.nats_user,
            nats_password=password.get_secret_value() if password is not None else None,
            database_url=database_url,
            state_dir=str(state_dir),
            log_level=settings.log_level,
            log_format=settings.log_format,
        )


def postgres_settings(dsn: str) -> dict[str, str]:
    """libpq keywords from a postgresql:// URL (Pathway's connector takes keywords)."""
    url = urlsplit(dsn)
    if url.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"database URL: expected postgresql://..., got scheme {url.scheme!r}")
    keywords = {
        "host": url.hostname,
        "port": str(url.port) if url.port else None,
        "dbname": unquote(url.path.lstrip("/")) or None,
        "user": unquote(url.username) if url.username else None,
        "password": unquote(url.password) if url.password else None,
    }
    return {k: v for k, v in keywords.items() if v} | dict(parse_qsl(url.query))


class Progress:
    """JSON lines on stdout, the child's reports to its supervisor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def report(self, **fields: Any) -> None:
        line = json.dumps(fields, separators=(",", ":"))
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


async def connect_nats(config: StreamingConfig) -> NatsClient:
    options: dict[str, Any] = {"name": "choreo-transform-streaming", "max_reconnect_attempts": -1}
    if config.nats_user and config.nats_password:
        options |= {"user": config.nats_user, "password": config.nats_password}
    return await nats.connect(list(config.nats_servers), **options)


def _subject_class(pw: Any) -> Any:
    """The Pathway connector subject class (defined here: Pathway is imported lazily)."""

    class JetStreamSubject(pw.io.python.ConnectorSubject):  # type: ignore[misc]
        """Feeds one event type to Pathway: a minibatch per fetched batch, its offset the
        batch's last stream sequence (see the module docstring)."""

        def __init__(self, config: StreamingConfig, event_type: str, progress: Progress) -> None:
            super().__init__(datasource_name=f"jetstream-{event_type}")
            self._config = config
            self._event_type = event_type
            self._parse = ROW_PARSERS[event_type]
            self._progress = progress
            self._next_seq: int | None = None

        def _seek(self, state: bytes) -> None:
            # Called before `run` when a snapshot exists: its last recorded sequence.
            self._next_seq = int(state.decode()) + 1

        def run(self) -> None:
            # Commits only when a batch and its offset are in, never on a timer.
            self._disable_commits()
            asyncio.run(self._consume())

        async def _consume(self) -> None:
            client = await connect_nats(self._config)
            reader = StreamReader(
                client.jetstream(),
                self._config.stream,
                data_subject(self._event_type),
                self._next_seq,
                batch=self._config.fetch_batch,
            )
            async for batch in reader.batches():
                skipped = 0
                for msg in batch:
                    row = self._row(msg)
                    if row is None:
                        skipped += 1
                    else:
                        self.next(**row)
                self._report_offset(str(batch[-1].metadata.sequence.stream).encode())
                self.commit()
                self._progress.report(
                    pipeline=self._event_type, pending=reader.pending, skipped=skipped
                )

        def _row(self, msg: Msg) -> dict[str, Any] | None:
            row: dict[str, Any] | None = None
            reason: str | None
            try:
                event = Event.from_bytes(msg.data)
            except ValidationError as exc:
                reason = f"not a valid event envelope: {exc.error_count()} error(s)"
            else:
                row, reason = self._parse(event)
            if row is None:
                log.warning(
                    "event skipped",
                    subject=msg.subject,
                    seq=msg.metadata.sequence.stream,
                    reason=reason,
                )
            return row

    return JetStreamSubject


def build_pipelines(pw: Any, config: StreamingConfig, progress: Progress) -> None:
    """Declare both pipelines and their PostgreSQL outputs on Pathway's (global) graph."""
    subject_class = _subject_class(pw)
    database = postgres_settings(config.database_url)
    # Catching up on a backlog reads no faster than the engine takes rows in.
    backlog = BACKLOG_BATCHES * config.fetch_batch
    events = pw.io.python.read(
        subject_class(config, BUSINESS_EVENT, progress),
        schema=pw.schema_from_types(
            company_id=str, event_type=str, occurred_at=pw.DateTimeUtc, event_time=pw.DateTimeUtc
        ),
        name=BUSINESS_EVENT,  # the name of its snapshot: keep it stable
        max_backlog_size=backlog,
    )

    def summary(table: Any) -> dict[str, Any]:
        return {
            "events": pw.reducers.count(),
            "first_occurred_at": pw.reducers.min(table.occurred_at),
            "last_occurred_at": pw.reducers.max(table.occurred_at),
        }

    per_type = events.groupby(events.company_id, events.event_type).reduce(
        events.company_id, events.event_type, **summary(events)
    )
    per_company = events.groupby(events.company_id).reduce(
        events.company_id, event_type=TOTAL_EVENT_TYPE, **summary(events)
    )
    analytics = pw.Table.concat_reindex(per_type, per_company)
    pw.io.postgres.write(
        analytics,
        database,
        "company_analytics",
        output_table_type="snapshot",
        primary_key=[analytics.company_id, analytics.event_type],
        name="company_analytics",
    )

    sales = pw.io.python.read(
        subject_class(config, SALE, progress),
        schema=pw.schema_from_types(
            region=str, quantity=int, unit_price=float, event_time=pw.DateTimeUtc
        ),
        name=SALE,
        max_backlog_size=backlog,
    )
    sales = sales.with_columns(revenue=sales.quantity * sales.unit_price)
    behavior = pw.temporal.common_behavior(cutoff=LATE_CUTOFF)
    windows = {
        "tumbling": pw.temporal.tumbling(duration=TUMBLING),
        "sliding": pw.temporal.sliding(hop=SLIDING_HOP, duration=SLIDING),
    }
    windowed = pw.Table.concat_reindex(
        *(
            sales.windowby(
                sales.event_time, window=window, instance=sales.region, behavior=behavior
            ).reduce(
                window_type=kind,
                region=pw.this._pw_instance,
                window_start=pw.this._pw_window_start,
                window_end=pw.this._pw_window_end,
                sales=pw.reducers.count(),
                quantity=pw.reducers.sum(pw.this.quantity),
                revenue=pw.reducers.sum(pw.this.revenue),
            )
            for kind, window in windows.items()
        )
    )
    pw.io.postgres.write(
        windowed,
        database,
        "sales_windows",
        output_table_type="snapshot",
        primary_key=[windowed.window_type, windowed.region, windowed.window_start],
        name="sales_windows",
    )
    for name, table in ((BUSINESS_EVENT, events), (SALE, sales)):
        _report_lag(pw, progress, name, table)


def _report_lag(pw: Any, progress: Progress, name: str, table: Any) -> None:
    """After each minibatch: how old the newest event it processed is."""
    newest = table.reduce(newest=pw.reducers.max(table.event_time))

    def on_change(key: Any, row: dict[str, Any], time: int, is_addition: bool) -> None:
        if is_addition:
            lag = datetime.now(UTC) - as_utc(row["newest"].to_pydatetime())
            progress.report(pipeline=name, lag_s=lag.total_seconds())

    pw.io.subscribe(newest, on_change)


async def create_tables(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(TABLES_SQL)
    finally:
        await conn.close()


def run_pipelines(config: StreamingConfig) -> None:
    """Run both pipelines until SIGTERM (blocking; in the child process)."""
    os.environ["PATHWAY_THREADS"] = str(pathway_threads())
    import pathway as pw

    asyncio.run(create_tables(config.database_url))
    build_pipelines(pw, config, Progress())
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    pw.run(
        monitoring_level=pw.MonitoringLevel.NONE,
        default_logging=False,
        persistence_config=pw.persistence.Config(
            pw.persistence.Backend.filesystem(state),
            snapshot_interval_ms=config.snapshot_interval_ms,
        ),
    )
