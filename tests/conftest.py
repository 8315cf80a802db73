"""Real servers for the whole test session, on free loopback ports in temporary dirs.

The launchers are the dev stack's own (`choreo.servers`). Each fixture can point at an
existing server instead:
`CHOREO_TEST_NATS_URL`, `CHOREO_TEST_S3_ENDPOINT_URL` (+ `CHOREO_TEST_S3_ACCESS_KEY`,
`CHOREO_TEST_S3_SECRET_KEY`), `CHOREO_TEST_DATABASE_URL`. With `--with-docker` the S3 tests
run against the real MinIO image through testcontainers (skipped when no engine answers).
"""

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from choreo.servers.nats import NatsServer
from choreo.servers.postgres import PostgresServer, remove_cluster
from choreo.servers.s3 import S3Identity, S3Server
from choreo.stack import provision_database
from shared.settings import Settings

TEST_DATABASE = "choreo_test"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--with-docker",
        action="store_true",
        help="run the S3 tests against MinIO in a container (testcontainers; needs Docker)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow fault-injection scenarios run only when asked for (`-m chaos` runs every
    scenario, fast and slow); the fast ones run with every test run."""
    if "chaos" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="slow chaos scenario: run `scripts/test.sh -m chaos`")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server with JetStream (file storage) for the session."""
    if url := os.environ.get("CHOREO_TEST_NATS_URL"):
        yield url
        return
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server.url


@pytest.fixture(scope="session")
def s3_endpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Endpoint]:
    """An S3-compatible server with one full-access key."""
    if url := os.environ.get("CHOREO_TEST_S3_ENDPOINT_URL"):
        yield S3Endpoint(
            url,
            os.environ["CHOREO_TEST_S3_ACCESS_KEY"],
            os.environ["CHOREO_TEST_S3_SECRET_KEY"],
        )
    elif request.config.getoption("--with-docker"):
        yield from _minio_container()
    else:
        key = S3Identity(
            "tests", "CHOREOTESTS", secrets.token_urlsafe(16), ["Admin", "Read", "Write", "List"]
        )
        with S3Server(tmp_path_factory.mktemp("s3"), [key]) as server:
            yield S3Endpoint(server.endpoint_url, key.access_key, key.secret_key)


def _minio_container() -> Iterator[S3Endpoint]:
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:
        pytest.skip(f"--with-docker: no Docker engine reachable ({exc})")
    from testcontainers.minio import MinioContainer

    with MinioContainer() as minio:
        config = minio.get_config()
        yield S3Endpoint(f"http://{config['endpoint']}", config["access_key"], config["secret_key"])


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL database owned by its own role, for the session."""
    if url := os.environ.get("CHOREO_TEST_DATABASE_URL"):
        yield url
        return
    # pytest's tmp dir is 0700: as root, where PostgreSQL runs as its own user, the cluster
    # is kept under /var/tmp instead (as the stack does); remove_cluster deletes it there.
    directory = tmp_path_factory.mktemp("postgres") / "cluster"
    password = secrets.token_urlsafe(16)
    try:
        with PostgresServer(directory, secrets.token_urlsafe(16)) as server:
            asyncio.run(
                provision_database(server.admin_dsn, TEST_DATABASE, TEST_DATABASE, password)
            )
            yield server.dsn(TEST_DATABASE, password, TEST_DATABASE)
    finally:
        remove_cluster(directory)


def server_settings(
    nats_url: str, s3_endpoint: S3Endpoint, database_url: str, data_dir: Path, **changes: Any
) -> Settings:
    """Settings pointing every service at the session's servers."""
    return Settings(
        environment="test",
        data_dir=data_dir,
        nats_url=nats_url,
        s3_endpoint_url=s3_endpoint.url,
        s3_access_key=s3_endpoint.access_key,
        s3_secret_key=s3_endpoint.secret_key,
        database_url=database_url,
        **changes,
    )


@pytest.fixture
def settings(nats_url: str, s3_endpoint: S3Endpoint, database_url: str, tmp_path: Path) -> Settings:
    """Settings pointing every service at the session's servers."""
    return server_settings(
        nats_url,
        s3_endpoint,
        database_url,
        tmp_path,
        # Short, so that a test of a crash sees the redelivery quickly.
        ack_wait_s=2.0,
        retry_backoff_s=(0.1, 0.2),
        max_deliver=3,
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the session's database."""
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    yield conn
    await conn.close()
