"""Helpers for tests that run services: serve one in-process, poll with a deadline, run the
CLI, a nats-server of a test's own, an S3 client on a stack."""

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import nats
from nats.js import JetStreamContext
from pydantic import SecretStr

from choreo.servers.nats import NatsServer, NatsUser
from choreo.stack import service_user
from shared.s3 import s3_client
from shared.service import Service
from shared.settings import Settings
from shared.subjects import DLQ, dlq_subject

if TYPE_CHECKING:  # the stubs are a dev dependency
    from types_aiobotocore_s3 import S3Client

T = TypeVar("T")


@asynccontextmanager
async def serve(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """Run a service's lifespan (broker, subscribers, resources) and give an HTTP client."""
    app = service.http
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float = 15.0,
    interval: float = 0.05,
) -> T:
    """Call `probe` until `done(result)`; fail with the last result after `within` s."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still not done after {within} s; last result: {result!r}")
        await asyncio.sleep(interval)


def choreo(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, on `data_dir`, with none of this process's CHOREO_*."""
    return subprocess.run(
        [sys.executable, "-m", "choreo", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        check=check,
        env={k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")},
    )


NATS_ADMIN = NatsUser("admin", "admin-password")


@contextmanager
def service_nats_server(directory: Path, service: str, password: str) -> Iterator[NatsServer]:
    """A nats-server of one test's own (no stream, consumer or state of another test), with
    the admin user and `service`'s user and permissions, as the stack gives them."""
    with NatsServer(directory, [NATS_ADMIN, service_user(service, password)]) as server:
        yield server


async def dead_letter(js: JetStreamContext, service: str, payload: str) -> dict[str, Any]:
    """The data of `service`'s newest dead letter, once it is the one of `payload`."""

    async def newest() -> dict[str, Any]:
        try:
            msg = await js.get_last_msg(DLQ.name, dlq_subject(service))
        except nats.js.errors.NotFoundError:
            return {}
        data: dict[str, Any] = json.loads(msg.data or b"{}")["data"]
        return data

    return await wait_for(newest, lambda d: d.get("payload") == payload)


def stack_s3(env: Mapping[str, str]) -> AbstractAsyncContextManager["S3Client"]:
    """An S3 client with the CLI's credentials from a stack's env (`choreo up --json`)."""
    settings = Settings(
        environment="test",
        s3_endpoint_url=env["CHOREO_S3_ENDPOINT_URL"],
        s3_access_key=SecretStr(env["CHOREO_S3_ACCESS_KEY"]),
        s3_secret_key=SecretStr(env["CHOREO_S3_SECRET_KEY"]),
    )
    return s3_client(settings)


def settings_env(settings: Settings) -> dict[str, str]:
    """`CHOREO_*` variables that give a subprocess the same settings."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if hasattr(getattr(settings, name), "get_secret_value"):
            value = getattr(settings, name).get_secret_value()
        env[f"CHOREO_{name.upper()}"] = value if isinstance(value, str) else _json(value)
    return env


def _json(value: object) -> str:
    return json.dumps(value)
