"""deploy/postgres/roles.sql on a real PostgreSQL: per-service roles, and audit rows that
nobody may update or delete, the audit role that owns the tables included."""

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from choreo.servers.postgres import PostgresServer
from services.audit.adapters import migrate, open_pool
from tests.deploy.support import ROOT

pytestmark = pytest.mark.integration
PASSWORDS = {role: secrets.token_hex(8) for role in ("audit", "transform", "reader")}


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A PostgreSQL of its own: roles.sql needs the superuser, as the image's init does."""
    directory = Path(tempfile.mkdtemp(prefix="choreo-pg-roles-"))
    try:
        with PostgresServer(directory, secrets.token_hex(8)) as pg:
            psql = subprocess.run(
                [
                    str(pg.bindir / "psql"),
                    pg.admin_dsn,
                    *(f"-v{role}_password={pw}" for role, pw in PASSWORDS.items()),
                    "-f",
                    str(ROOT / "deploy" / "postgres" / "roles.sql"),
                ],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
            )
            assert psql.returncode == 0, psql.stderr
            yield pg
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def audit_dsn(server: PostgresServer) -> str:
    dsn = server.dsn("choreo_audit", PASSWORDS["audit"], "choreo")

    async def prepare() -> None:
        async with open_pool(dsn) as pool:
            await migrate(pool)  # the audit service's own start-up, as its own role

    asyncio.run(prepare())
    return dsn


@pytest.fixture
async def audit(audit_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(audit_dsn)
    yield conn
    await conn.close()


async def insert_event(conn: asyncpg.Connection) -> str:
    event_id = f"roles-{secrets.token_hex(6)}"
    await conn.execute(
        "INSERT INTO events (id, type, source, subject, time, data, nats_subject, stream, "
        "stream_seq) VALUES ($1, 'sale', 'test', 'sale', now(), '{}'::jsonb, 'data.sale', "
        "'DATA', 1)",
        event_id,
    )
    return event_id


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET type = 'changed' WHERE id = $1",
        "DELETE FROM events WHERE id = $1",
    ],
)
async def test_audit_may_insert_and_read_but_never_change_audit_rows(
    audit: asyncpg.Connection, statement: str
) -> None:
    event_id = await insert_event(audit)
    assert await audit.fetchval("SELECT type FROM events WHERE id = $1", event_id) == "sale"
    # Refused by the privileges the audit migrations revoke or by the guard's trigger.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await audit.execute(statement, event_id)
    assert await audit.fetchval("SELECT type FROM events WHERE id = $1", event_id) == "sale"


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE events",
        "TRUNCATE audit_log",
        "TRUNCATE business_events",
        "DROP TRIGGER choreo_append_only ON events",
        "ALTER TABLE events DISABLE TRIGGER choreo_append_only",
        "ALTER TABLE events DISABLE TRIGGER ALL",
        "DROP TABLE events CASCADE",
    ],
)
async def test_the_owner_cannot_remove_the_guard(audit: asyncpg.Connection, statement: str) -> None:
    event_id = await insert_event(audit)
    with pytest.raises(asyncpg.PostgresError):
        await audit.execute(statement)
    assert await audit.fetchval("SELECT count(*) FROM events WHERE id = $1", event_id) == 1


async def test_the_guard_is_on_every_audit_table(audit: asyncpg.Connection) -> None:
    guarded = await audit.fetch(
        "SELECT tgrelid::regclass::text AS name FROM pg_trigger WHERE tgname = 'choreo_append_only'"
    )
    assert {r["name"] for r in guarded} == {"events", "audit_log", "business_events"}


async def test_workflow_projections_stay_updatable(audit: asyncpg.Connection) -> None:
    # The audit service upserts run and step rows as events arrive in any order.
    trigger = await audit.fetchval(
        "SELECT count(*) FROM pg_trigger "
        "WHERE tgrelid = 'workflow_runs'::regclass AND NOT tgisinternal"
    )
    assert trigger == 0


async def test_the_reader_reads_and_writes_nothing(server: PostgresServer, audit_dsn: str) -> None:
    conn = await asyncpg.connect(server.dsn("choreo_reader", PASSWORDS["reader"], "choreo"))
    try:
        assert await conn.fetchval("SELECT count(*) FROM events") >= 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO audit_log (id, message) VALUES ('reader', 'no')")
    finally:
        await conn.close()


async def test_transform_owns_only_its_analytics_database(server: PostgresServer) -> None:
    conn = await asyncpg.connect(
        server.dsn("choreo_transform", PASSWORDS["transform"], "analytics")
    )
    await conn.execute("CREATE TABLE IF NOT EXISTS probe (n int)")
    await conn.close()
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await asyncpg.connect(server.dsn("choreo_transform", PASSWORDS["transform"], "choreo"))
