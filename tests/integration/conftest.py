"""Fixtures of the integration tests beyond the session's servers (tests/conftest.py)."""

import os
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from choreo.servers.nats import NatsServer
from choreo.servers.ports import free_port
from choreo.stack import ServiceProcess
from services.audit.adapters import PgEventStore, migrate
from services.store.buckets import ensure_buckets
from shared.ids import uuid7
from shared.jetstream import ensure_streams
from shared.lake import layer_buckets
from shared.s3 import s3_client
from shared.settings import Settings
from shared.subjects import SERVICES
from tests.conftest import S3Endpoint, server_settings
from tests.server_support import NATS_ADMIN
from tests.support import settings_env

if TYPE_CHECKING:  # the stubs are a dev dependency
    from types_aiobotocore_s3 import S3Client


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[PgEventStore]:
    """The audit service's event store on the test database, migrated."""
    assert settings.database_url is not None
    pool = await asyncpg.create_pool(settings.database_url.get_secret_value(), min_size=1)
    await migrate(pool)
    yield PgEventStore(pool)
    await pool.close()


@pytest.fixture
async def s3(settings: Settings) -> AsyncIterator["S3Client"]:
    """An S3 client on the test S3 server; the lake's buckets exist."""
    async with s3_client(settings) as client:
        await ensure_buckets(client, list(layer_buckets(settings).values()))
        yield client


@pytest.fixture
async def admin(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """An admin connection to the module's own `nats_server`; the streams exist."""
    client = await nats.connect(nats_server.url, user=NATS_ADMIN.user, password=NATS_ADMIN.password)
    await ensure_streams(client.jetstream(), Settings(environment="test"))
    yield client
    await client.drain()


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    """JetStream on the session's nats-server; the streams exist."""
    client = await nats.connect(settings.nats_url)
    js = client.jetstream()
    await ensure_streams(js, settings)
    yield js
    await client.close()


@pytest.fixture
def probe() -> str:
    """An event type of this test only, so its `data.<type>` subject holds only its events."""
    return f"probe_{uuid7().replace('-', '')[-12:]}"


@pytest.fixture(scope="module")
def services(
    nats_url: str,
    s3_endpoint: S3Endpoint,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """Every service as its own process on the session's servers; its base URL by name."""
    root = tmp_path_factory.mktemp("services")
    base = server_settings(nats_url, s3_endpoint, database_url, root)
    processes = {}
    for name in SERVICES:
        port = free_port()
        env = {**os.environ, **settings_env(base), "CHOREO_HTTP_PORT": str(port)}
        env["CHOREO_DATA_DIR"] = str(root / name)
        if name == "transform":
            env["CHOREO_TRANSFORM_STATE_DIR"] = str(root / "transform-state")
        processes[name] = ServiceProcess(name, port, env, root / f"{name}.log")
    with ThreadPoolExecutor(len(processes)) as pool:
        list(pool.map(lambda p: p.start(), processes.values()))
    try:
        yield {name: process.url for name, process in processes.items()}
    finally:
        with ThreadPoolExecutor(len(processes)) as pool:
            list(pool.map(lambda p: p.stop(), processes.values()))
