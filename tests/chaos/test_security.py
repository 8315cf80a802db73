"""Least privilege on the real embedded stack: each service's NATS user, S3 key and
PostgreSQL role can do its own job and nothing else, API keys are enforced, and no secret
reaches a log."""

import asyncio
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import aioboto3
import asyncpg
import httpx
import nats
import pytest
from botocore.exceptions import ClientError

from choreo.credentials import AUDIT_ROLE, Credentials
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.chaos.harness import ChaosStack
from tests.samples import SALE
from tests.support import serve, wait_for

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
def stack() -> Iterator[ChaosStack]:
    running = ChaosStack()
    yield running
    running.down()


@pytest.fixture(scope="module")
def creds(stack: ChaosStack) -> Credentials:
    return Credentials.load_or_create(stack.data_dir / "credentials.json")


async def test_nats_refuses_a_subject_outside_a_service_permissions(
    stack: ChaosStack, creds: Credentials
) -> None:
    """Ingest may not publish notifications or another service's dead letters (it may
    publish every subject a service consumes: it replays dead letters); store may not
    publish data or alerts. NATS refuses each one, and the test counts the refusals."""
    attempts = {"ingest": ["notify.email", "dlq.audit"], "store": ["data.sale", "fraud.alert"]}
    refused: list[str] = []

    for user, subjects in attempts.items():

        async def on_error(exc: Exception) -> None:
            refused.append(str(exc))

        nc = await nats.connect(
            stack.env["CHOREO_NATS_URL"],
            user=user,
            password=creds.nats[user],
            error_cb=on_error,
        )
        expected_so_far = len(refused) + len(subjects)
        try:
            for subject in subjects:
                await nc.publish(subject, b"{}")
            await nc.flush()
            await wait_for(
                lambda: asyncio.sleep(0, len(refused)),
                lambda n, want=expected_so_far: n >= want,  # type: ignore[misc]
            )
        finally:
            await nc.close()
    expected = [s for subjects in attempts.values() for s in subjects]
    assert len(refused) == len(expected), refused
    for subject in expected:
        assert any("permissions violation" in r.lower() and subject in r for r in refused), refused
    print(f"NATS refused {len(refused)} of {len(expected)} forbidden publishes")


async def test_no_service_can_delete_or_purge_a_stream(
    stack: ChaosStack, creds: Credentials
) -> None:
    """Every service may use the JetStream API, but not to destroy Choreo's streams."""
    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        refused.append(str(exc))

    nc = await nats.connect(
        stack.env["CHOREO_NATS_URL"],
        user="audit",
        password=creds.nats["audit"],
        error_cb=on_error,
    )
    js = nc.jetstream(timeout=2)
    try:
        before = (await js.stream_info("DATA")).state.messages
        for attempt in (js.delete_stream("DATA"), js.purge_stream("DATA")):
            with pytest.raises(nats.errors.Error):
                await attempt
        assert (await js.stream_info("DATA")).state.messages >= before
    finally:
        await nc.close()
    assert any("$js.api.stream.delete.data" in r.lower() for r in refused), refused
    assert any("$js.api.stream.purge.data" in r.lower() for r in refused), refused


async def test_a_service_publishing_its_own_subject_is_allowed(
    stack: ChaosStack, creds: Credentials
) -> None:
    """The other half of the check above: the permissions are not simply 'deny all'."""
    nc = await nats.connect(
        stack.env["CHOREO_NATS_URL"], user="fraud", password=creds.nats["fraud"]
    )
    try:
        ack = await nc.jetstream().publish("fraud.alert", b"{}", headers={"Nats-Msg-Id": "sec-1"})
        assert ack.stream == "FRAUD"
    finally:
        await nc.close()


async def _put(stack: ChaosStack, creds: Credentials, user: str, bucket: str) -> str:
    """'ok' or the S3 error code of a PUT into `bucket` with `user`'s key."""
    session = aioboto3.Session()
    async with session.client(
        "s3",
        endpoint_url=stack.env["CHOREO_S3_ENDPOINT_URL"],
        aws_access_key_id=creds.s3[user].access_key,
        aws_secret_access_key=creds.s3[user].secret_key,
        region_name="us-east-1",
    ) as s3:
        try:
            await s3.put_object(Bucket=bucket, Key=f"security/{user}.txt", Body=b"x")
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return "ok"


@pytest.mark.parametrize(
    ("user", "bucket", "expected"),
    [
        ("ingest", "raw", "ok"),
        ("ingest", "curated", "AccessDenied"),
        ("ingest", "staging", "AccessDenied"),
        ("transform", "staging", "ok"),
        ("transform", "raw", "AccessDenied"),
        ("fraud", "curated", "ok"),
        ("fraud", "raw", "AccessDenied"),
    ],
)
async def test_s3_keys_write_only_their_own_layers(
    stack: ChaosStack, creds: Credentials, user: str, bucket: str, expected: str
) -> None:
    assert await _put(stack, creds, user, bucket) == expected


async def test_the_audit_role_cannot_change_audit_rows(
    stack: ChaosStack, creds: Credentials
) -> None:
    async with httpx.AsyncClient(base_url=stack.env["CHOREO_INGEST_URL"]) as http:
        posted = await http.post("/v1/events", json={"type": "sale", "data": SALE, "id": "sec-e1"})
    assert posted.status_code == 202
    admin = urlsplit(stack.env["CHOREO_DATABASE_URL"])
    audit_dsn = urlunsplit(
        admin._replace(
            netloc=f"{AUDIT_ROLE}:{creds.postgres[AUDIT_ROLE]}@{admin.hostname}:{admin.port}"
        )
    )
    conn = await asyncpg.connect(audit_dsn)
    try:
        await wait_for(
            lambda: conn.fetchval("SELECT count(*) FROM events WHERE id = 'sec-e1'"),
            lambda n: n == 1,
        )
        for statement in (
            "UPDATE events SET type = 'forged' WHERE id = 'sec-e1'",
            "DELETE FROM events WHERE id = 'sec-e1'",
            "TRUNCATE events",
            "DELETE FROM audit_log",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
        assert await conn.fetchval("SELECT type FROM events WHERE id = 'sec-e1'") == "sale"
    finally:
        await conn.close()


async def test_ingest_requires_an_api_key_when_keys_are_configured(
    stack: ChaosStack, creds: Credentials
) -> None:
    """The embedded stack runs without keys; ingest configured with keys, connected as the
    ingest user to the stack's NATS, refuses a request without one or with a wrong one."""
    config = IngestSettings(
        environment="test",
        nats_url=stack.env["CHOREO_NATS_URL"],
        nats_user="ingest",
        nats_password=creds.nats["ingest"],
        s3_endpoint_url=stack.env["CHOREO_S3_ENDPOINT_URL"],
        s3_access_key=creds.s3["ingest"].access_key,
        s3_secret_key=creds.s3["ingest"].secret_key,
        ingest_api_keys=("the-key",),
    )
    async with serve(create_app(config)) as http:
        event = {"type": "sale", "data": SALE}
        missing = await http.post("/v1/events", json=event)
        wrong = await http.post("/v1/events", json=event, headers={"x-api-key": "guess"})
        right = await http.post("/v1/events", json=event, headers={"x-api-key": "the-key"})
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 202)
    assert "API key" in missing.json()["detail"]


def test_no_secret_appears_in_any_log(stack: ChaosStack, creds: Credentials) -> None:
    secrets = {
        *creds.nats.values(),
        *creds.postgres.values(),
        *(key.secret_key for key in creds.s3.values()),
    }
    logs = list((stack.data_dir / "logs").glob("*.log"))
    assert logs, "the stack wrote no logs to scan"
    leaks = [
        f"{path.name} holds a secret"
        for path in logs
        for text in [path.read_text(errors="replace")]
        if any(secret in text for secret in secrets)
    ]
    assert leaks == []
    print(
        f"scanned {len(logs)} logs ({sum(p.stat().st_size for p in logs)} bytes) for "
        f"{len(secrets)} secrets: none found"
    )
