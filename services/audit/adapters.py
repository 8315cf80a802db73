"""PostgreSQL adapters of the audit service: the event store and the migration runner."""

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import fields
from datetime import date, datetime
from importlib import resources
from typing import Any

import asyncpg
import structlog

from services.audit.domain import EVENT_COLUMNS, EventRow, RunCursor
from services.audit.projections import BusinessRow, FraudRow, LakeRow, RunUpdate, StepUpdate
from shared.lake import Group
from shared.subjects import FRAUD_ALERT

log = structlog.get_logger(__name__)

# Any constant works; it only has to be the same in every audit replica.
MIGRATION_LOCK_ID = 0x63686F72656F  # "choreo"


RUN_COLUMNS = tuple(f.name for f in fields(RunUpdate))
STEP_COLUMNS = tuple(f.name for f in fields(StepUpdate))
JSON_COLUMNS = {"inputs", "outputs", "output", "problems"}


def _upsert(
    table: str,
    columns: tuple[str, ...],
    key: tuple[str, ...],
    *,
    keep_first: tuple[str, ...],
    earliest: tuple[str, ...],
    when_set: tuple[str, ...],
) -> str:
    """An INSERT ... ON CONFLICT that applies an update only if it is not older than the
    row (order_key); `keep_first` columns keep their first non-null value, `earliest` the
    smallest, `when_set` take a newer update's value only when it has one."""
    newer = "EXCLUDED.order_key >= t.order_key"
    sets = []
    for column in columns:
        if column in key:
            continue
        if column == "order_key":
            value = "GREATEST(t.order_key, EXCLUDED.order_key)"
        elif column in keep_first:
            value = f"COALESCE(t.{column}, EXCLUDED.{column})"
        elif column in earliest:
            value = f"LEAST(t.{column}, EXCLUDED.{column})"
        elif column in when_set:
            value = (
                f"CASE WHEN {newer} AND EXCLUDED.{column} IS NOT NULL "
                f"THEN EXCLUDED.{column} ELSE t.{column} END"
            )
        else:
            value = f"CASE WHEN {newer} THEN EXCLUDED.{column} ELSE t.{column} END"
        sets.append(f"{column} = {value}")
    placeholders = ", ".join(
        f"${n}::jsonb" if c in JSON_COLUMNS else f"${n}" for n, c in enumerate(columns, 1)
    )
    return (
        f"INSERT INTO {table} AS t ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(sets)}, updated_at = now()"
    )


RUN_UPSERT = _upsert(
    "workflow_runs",
    RUN_COLUMNS,
    ("runid",),
    keep_first=("name",),
    earliest=("requested_at", "started_at"),
    when_set=("inputs",),
)
STEP_UPSERT = _upsert(
    "step_runs",
    STEP_COLUMNS,
    ("runid", "stepid"),
    keep_first=("uses", "service"),
    earliest=("requested_at", "started_at"),
    when_set=("inputs", "duration_s"),
)


VERDICT_COLUMNS = (
    "transaction_id",
    "transaction_event_id",
    "card_id",
    "terminal_id",
    "amount",
    "currency",
    "tx_time",
    "score",
    "decision",
    "reasons",
    "rules",
    "model",
)


def _verdict_insert(table: str, id_column: str, time_column: str, key: str) -> str:
    """Insert a verdict row once per `key`: a re-score (redelivery, restart) changes nothing."""
    columns = (*VERDICT_COLUMNS, id_column, time_column)
    placeholders = ", ".join(
        f"${n}::jsonb" if c in ("reasons", "rules") else f"${n}" for n, c in enumerate(columns, 1)
    )
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({key}) DO NOTHING"
    )


FRAUD_SCORE_INSERT = _verdict_insert(
    "fraud_scores", "scored_event_id", "scored_at", "transaction_id"
)
FRAUD_ALERT_INSERT = _verdict_insert("fraud_alerts", "id", "created_at", "id")
# Selected as the events' `data` names them (`timestamp` is the transaction's time).
VERDICT_SELECT = (
    "transaction_id, transaction_event_id, card_id, terminal_id, amount, currency,"
    " tx_time AS timestamp, score, decision, reasons::text AS reasons, rules::text AS rules, model"
)


def _verdict_values(row: FraudRow) -> tuple[Any, ...]:
    v = row.verdict
    return (
        v.transaction_id,
        v.transaction_event_id,
        v.card_id,
        v.terminal_id,
        v.amount,
        v.currency,
        v.timestamp,
        v.score,
        v.decision,
        json.dumps(v.reasons),
        json.dumps(v.rules),
        v.model,
        row.event_id,
        row.event_time,
    )


def _values(update: RunUpdate | StepUpdate, columns: tuple[str, ...]) -> list[Any]:
    return [
        json.dumps(getattr(update, c))
        if c in JSON_COLUMNS and getattr(update, c) is not None
        else getattr(update, c)
        for c in columns
    ]


RUN_TIME = "COALESCE(requested_at, started_at)"
RUN_SUMMARY = (
    "runid, name, status, generation, reason, failed_step, requested_at, started_at, ended_at"
)
_JSON_TEXT = {"data", "inputs", "outputs", "output", "problems", "reasons", "rules"}


def _decode(record: asyncpg.Record) -> dict[str, Any]:
    """A row as a dict, JSON columns (selected as text) parsed."""
    return {
        k: json.loads(v) if k in _JSON_TEXT and isinstance(v, str) else v
        for k, v in dict(record).items()
    }


class PgEventStore:
    """Inserts event rows with COPY into a temporary table, then one idempotent INSERT.

    COPY is several times faster than `executemany` here; the staging step lets
    `ON CONFLICT (id) DO NOTHING` make redeliveries harmless.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert_events(
        self,
        rows: list[EventRow],
        runs: Sequence[RunUpdate] = (),
        steps: Sequence[StepUpdate] = (),
        business: Sequence[BusinessRow] = (),
        fraud: Sequence[FraudRow] = (),
        lake: Sequence[LakeRow] = (),
    ) -> int:
        columns = ", ".join(EVENT_COLUMNS)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS events_in "
                "(LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            await conn.copy_records_to_table("events_in", records=rows, columns=EVENT_COLUMNS)
            status = await conn.execute(
                f"INSERT INTO events ({columns}) SELECT {columns} FROM events_in "
                "ON CONFLICT (id) DO NOTHING"
            )
            # In event order: each upsert keeps whichever state is later (order_key).
            if runs:
                await conn.executemany(RUN_UPSERT, [_values(u, RUN_COLUMNS) for u in runs])
            if steps:
                await conn.executemany(STEP_UPSERT, [_values(u, STEP_COLUMNS) for u in steps])
            if business:
                await conn.executemany(
                    "INSERT INTO business_events"
                    " (id, company_id, event_type, payload, occurred_at, time)"
                    " VALUES ($1, $2, $3, $4::jsonb, $5, $6) ON CONFLICT (id) DO NOTHING",
                    [
                        (
                            b.id,
                            b.company_id,
                            b.event_type,
                            json.dumps(b.payload),
                            b.occurred_at,
                            b.time,
                        )
                        for b in business
                    ],
                )
            alerts = [_verdict_values(r) for r in fraud if r.type == FRAUD_ALERT]
            scores = [_verdict_values(r) for r in fraud if r.type != FRAUD_ALERT]
            if scores:
                await conn.executemany(FRAUD_SCORE_INSERT, scores)
            if alerts:
                await conn.executemany(FRAUD_ALERT_INSERT, alerts)
            if lake:
                await conn.executemany(
                    "INSERT INTO lake_objects"
                    " (key, bucket, event_type, day, first_seq, last_seq)"
                    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO NOTHING",
                    [
                        (
                            o.key,
                            o.bucket,
                            o.group.type,
                            date.fromisoformat(o.group.date),
                            o.first_seq,
                            o.last_seq,
                        )
                        for o in lake
                    ],
                )
        return int(status.rsplit(" ", 1)[-1])

    async def recent_events(self, event_type: str | None, limit: int) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT id, type, source, subject, time, runid, stepid, correlationid, causationid,"
            " nats_subject, stream_seq, received_at, data::text AS data FROM events"
            " WHERE $1::text IS NULL OR type = $1 ORDER BY received_at DESC, id DESC LIMIT $2",
            event_type,
            limit,
        )
        return [_decode(r) for r in rows]

    async def event(self, event_id: str) -> dict[str, Any] | None:
        row = await self._pool.fetchrow(
            "SELECT id, type, source, subject, time, runid, stepid, correlationid, causationid,"
            " nats_subject, stream, stream_seq, received_at, data::text AS data"
            " FROM events WHERE id = $1",
            event_id,
        )
        return None if row is None else _decode(row)

    async def runs(
        self,
        status: str | None,
        limit: int,
        *,
        workflow: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        runid_prefix: str | None = None,
        after: RunCursor | None = None,
    ) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            f"SELECT {RUN_SUMMARY} FROM workflow_runs"
            f" WHERE ($1::text IS NULL OR status = $1) AND ($3::text IS NULL OR name = $3)"
            f" AND ($4::timestamptz IS NULL OR {RUN_TIME} >= $4)"
            f" AND ($5::timestamptz IS NULL OR {RUN_TIME} < $5)"
            " AND ($6::text IS NULL OR starts_with(runid, $6))"
            f" AND ($7::timestamptz IS NULL OR ({RUN_TIME}, runid) < ($7, $8::text))"
            f" ORDER BY {RUN_TIME} DESC NULLS LAST, runid DESC LIMIT $2",
            status,
            limit,
            workflow,
            since,
            until,
            runid_prefix,
            after.time if after else None,
            after.runid if after else None,
        )
        return [_decode(r) for r in rows]

    async def run(self, runid: str) -> dict[str, Any] | None:
        row = await self._pool.fetchrow(
            f"SELECT {RUN_SUMMARY}, inputs::text, outputs::text, problems::text"
            " FROM workflow_runs WHERE runid = $1",
            runid,
        )
        if row is None:
            return None
        steps = await self._pool.fetch(
            "SELECT stepid, status, generation, attempt, uses, service, inputs::text,"
            " output::text, error, requested_at, started_at, ended_at, duration_s"
            " FROM step_runs WHERE runid = $1",
            runid,
        )
        return {**_decode(row), "steps": [_decode(s) for s in steps]}

    async def run_events(self, runid: str) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT id, type, source, subject, time, runid, stepid, attempt, correlationid,"
            " causationid, nats_subject, received_at, data::text AS data"
            " FROM events WHERE runid = $1",
            runid,
        )
        return [_decode(r) for r in rows]

    async def fraud_alerts(self, since: datetime | None, limit: int) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            f"SELECT id, created_at, {VERDICT_SELECT} FROM fraud_alerts"
            " WHERE $1::timestamptz IS NULL OR created_at >= $1"
            " ORDER BY created_at DESC, id DESC LIMIT $2",
            since,
            limit,
        )
        return [_decode(r) for r in rows]

    async def fraud_score(self, transaction_id: str) -> dict[str, Any] | None:
        row = await self._pool.fetchrow(
            f"SELECT {VERDICT_SELECT}, scored_event_id, scored_at FROM fraud_scores"
            " WHERE transaction_id = $1",
            transaction_id,
        )
        return None if row is None else _decode(row)

    async def lake_object(self, group: Group, seq: int) -> LakeRow | None:
        row = await self._pool.fetchrow(
            "SELECT key, bucket, first_seq, last_seq FROM lake_objects"
            " WHERE event_type = $1 AND day = $2 AND first_seq <= $3 AND last_seq >= $3"
            " ORDER BY first_seq DESC LIMIT 1",
            group.type,
            date.fromisoformat(group.date),
            seq,
        )
        if row is None:
            return None
        return LakeRow(row["key"], row["bucket"], group, row["first_seq"], row["last_seq"])

    async def causation_chain(self, event_id: str, limit: int) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "WITH RECURSIVE up(id, causationid, depth) AS ("
            " SELECT id, causationid, 0 FROM events WHERE id = $1"
            " UNION SELECT e.id, e.causationid, up.depth - 1 FROM events e"
            " JOIN up ON e.id = up.causationid WHERE up.depth > -($2::int)),"
            " down(id, depth) AS ("
            " SELECT id, 0 FROM events WHERE id = $1"
            " UNION SELECT e.id, down.depth + 1 FROM events e"
            " JOIN down ON e.causationid = down.id WHERE down.depth < $2),"
            " chain AS (SELECT id, depth FROM up UNION SELECT id, depth FROM down)"
            " SELECT e.id, e.type, e.source, e.subject, e.time, e.runid, e.stepid,"
            " e.correlationid, e.causationid, e.nats_subject, e.stream_seq, e.received_at,"
            " e.data::text AS data, min(chain.depth) AS depth"
            " FROM chain JOIN events e ON e.id = chain.id"
            " GROUP BY e.id ORDER BY depth, e.time, e.id LIMIT $2",
            event_id,
            limit,
        )
        return [_decode(r) for r in rows]

    async def fraud_summary(self, since: datetime, buckets: int) -> dict[str, Any]:
        histogram = await self._pool.fetch(
            "SELECT least(floor(score * $2)::int, $2 - 1) AS bucket, count(*) AS n"
            " FROM fraud_scores WHERE scored_at >= $1 GROUP BY 1 ORDER BY 1",
            since,
            buckets,
        )
        decisions = await self._pool.fetch(
            "SELECT decision, count(*) AS n FROM fraud_scores WHERE scored_at >= $1 GROUP BY 1",
            since,
        )
        rules = await self._pool.fetch(
            "SELECT rule, count(*) AS n FROM fraud_alerts, jsonb_object_keys(rules) AS rule"
            " WHERE created_at >= $1 GROUP BY rule ORDER BY n DESC, rule",
            since,
        )
        counts = {r["bucket"]: r["n"] for r in histogram}
        return {
            "since": since,
            "scores": [counts.get(b, 0) for b in range(buckets)],
            "decisions": {r["decision"]: r["n"] for r in decisions},
            "rules": {r["rule"]: r["n"] for r in rules},
        }

    async def log_message(
        self, entry_id: str, runid: str, stepid: str, message: str, details: Any
    ) -> None:
        await self._pool.execute(
            "INSERT INTO audit_log (id, runid, stepid, message, details)"
            " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (id) DO NOTHING",
            entry_id,
            runid,
            stepid,
            message,
            json.dumps(details),
        )

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply the SQL files in `migrations/` not applied yet, in order; return their names.

    An advisory lock serialises replicas starting together; each file runs in its own
    transaction with its version row, so a failed migration leaves nothing half-applied.
    """
    files = sorted(
        (
            f
            for f in resources.files("services.audit.migrations").iterdir()
            if f.name.endswith(".sql")
        ),
        key=lambda f: f.name,
    )
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for file in files:
                if file.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(file.read_text())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", file.name
                    )
                applied.append(file.name)
                log.info("migration applied", version=file.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied


@asynccontextmanager
async def open_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, command_timeout=30)
    try:
        yield pool
    finally:
        await pool.close()
