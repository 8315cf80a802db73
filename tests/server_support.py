"""Helpers for tests that talk to the servers themselves: a nats-server of a test's own with
a service's user, a service's newest dead letter, an S3 client on a running stack."""

import json
from collections.abc import Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
from nats.js import JetStreamContext
from pydantic import SecretStr

from choreo.servers.nats import NatsServer, NatsUser
from choreo.stack import nats_user
from shared.s3 import s3_client
from shared.settings import Settings
from shared.subjects import DLQ, dlq_subject
from tests.support import wait_for

if TYPE_CHECKING:  # the stubs are a dev dependency
    from types_aiobotocore_s3 import S3Client

NATS_ADMIN = NatsUser("admin", "admin-password")


@contextmanager
def service_nats_server(directory: Path, service: str, password: str) -> Iterator[NatsServer]:
    """A nats-server of one test's own (no stream, consumer or state of another test), with
    the admin user and `service`'s user and permissions, as the stack gives them."""
    with NatsServer(directory, [NATS_ADMIN, nats_user(service, password)]) as server:
        yield server


def as_admin(settings: Settings, server: NatsServer) -> Settings:
    """`settings` pointed at a test's own nats-server, as its admin user."""
    return settings.model_copy(
        update={
            "nats_url": server.url,
            "nats_user": NATS_ADMIN.user,
            "nats_password": SecretStr(NATS_ADMIN.password),
        }
    )


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
