"""PostgreSQL adapters of the audit service: the event store and the migration runner."""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import asyncpg
import structlog

from services.audit.domain import EVENT_COLUMNS, EventRow

log = structlog.get_logger(__name__)

# Any constant works; it only has to be the same in every audit replica.
MIGRATION_LOCK_ID = 0x63686F72656F  # "choreo"


class PgEventStore:
    """Inserts event rows with COPY into a temporary table, then one idempotent INSERT.

    COPY is several times faster than `executemany` here; the staging step lets
    `ON CONFLICT (id) DO NOTHING` make redeliveries harmless.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert_events(self, rows: list[EventRow]) -> int:
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
        return int(status.rsplit(" ", 1)[-1])

    async def recent_events(self, event_type: str | None, limit: int) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT id, type, source, subject, time, runid, stepid, correlationid, causationid,"
            " nats_subject, stream_seq, received_at, data::text AS data FROM events"
            " WHERE $1::text IS NULL OR type = $1 ORDER BY received_at DESC, id DESC LIMIT $2",
            event_type,
            limit,
        )
        return [{**dict(r), "data": json.loads(r["data"]) if r["data"] else None} for r in rows]

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
