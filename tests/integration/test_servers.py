"""The server launchers against the real nats-server, SeaweedFS and PostgreSQL binaries."""

import asyncio
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aioboto3
import asyncpg
import nats
import nats.errors
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import ClientCreatorContext
from botocore import UNSIGNED
from botocore.exceptions import ClientError
from types_aiobotocore_s3 import S3Client

from choreo.servers.nats import NatsServer, NatsUser
from choreo.servers.ports import free_port
from choreo.servers.postgres import (
    BINARIES_PREFIX,
    CLUSTER_PREFIX,
    RELOCATION_PARENTS,
    PostgresServer,
    find_bindir,
    reachable_bindir,
    remove_cluster,
)
from choreo.servers.process import ServerStartError, stop_pid
from choreo.servers.s3 import GRPC_OFFSET, S3Identity, S3Server

pytestmark = pytest.mark.integration

NATS_ADMIN = NatsUser("admin", secrets.token_urlsafe(24))
NATS_PRODUCER = NatsUser(
    "producer", secrets.token_urlsafe(24), publish=["ingest.>"], subscribe=["_INBOX.>"]
)
S3_ADMIN = S3Identity(
    "admin", "admin-key", secrets.token_urlsafe(24), ["Admin", "Read", "Write", "List", "Tagging"]
)
S3_RAW_ONLY = S3Identity(
    "raw-writer", "raw-key", secrets.token_urlsafe(24), ["Read:raw", "Write:raw", "List:raw"]
)
PG_PASSWORD = secrets.token_urlsafe(24)


def port_is_free(port: int) -> bool:
    """Whether a new server could listen on `port`: like servers do, SO_REUSEADDR lets the
    TIME_WAIT connections a stopped server leaves behind pass."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def process_group(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def test_free_port_with_grpc_offset_leaves_room() -> None:
    ports = {free_port(grpc_offset=GRPC_OFFSET) for _ in range(20)}
    assert len(ports) == 20
    for port in ports:
        assert port + GRPC_OFFSET <= 65535
        assert port + GRPC_OFFSET not in ports
        assert port_is_free(port)
        assert port_is_free(port + GRPC_OFFSET)


# --- NATS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats"), [NATS_ADMIN, NATS_PRODUCER]) as server:
        yield server


async def test_nats_jetstream_round_trip(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url, user=NATS_ADMIN.user, password=NATS_ADMIN.password)
    try:
        js = nc.jetstream()
        await js.add_stream(name="ROUNDTRIP", subjects=["roundtrip.>"])
        ack = await js.publish("roundtrip.one", b"hello")
        message = await js.get_msg("ROUNDTRIP", ack.seq)
        assert message.data == b"hello"
    finally:
        await nc.close()


async def test_nats_publish_permissions_are_enforced(nats_server: NatsServer) -> None:
    admin = await nats.connect(nats_server.url, user=NATS_ADMIN.user, password=NATS_ADMIN.password)
    errors: asyncio.Queue[Exception] = asyncio.Queue()

    async def on_error(error: Exception) -> None:
        await errors.put(error)

    producer = await nats.connect(
        nats_server.url,
        user=NATS_PRODUCER.user,
        password=NATS_PRODUCER.password,
        error_cb=on_error,
    )
    try:
        allowed = await admin.subscribe("ingest.orders")
        forbidden = await admin.subscribe("audit.orders")
        await admin.flush()

        await producer.publish("ingest.orders", b"ok")
        await producer.publish("audit.orders", b"not allowed")
        await producer.flush()

        # Generous: once in a whole CI run the allowed message took longer than 2 s to be
        # read (cause not found; the test asserts permissions, not speed).
        assert (await allowed.next_msg(timeout=15)).data == b"ok"
        error = await asyncio.wait_for(errors.get(), timeout=5)
        assert "permissions violation" in str(error).lower()
        assert "audit.orders" in str(error)
        with pytest.raises(nats.errors.TimeoutError):
            await forbidden.next_msg(timeout=0.3)
    finally:
        await producer.close()
        await admin.close()


async def test_nats_refuses_wrong_password(nats_server: NatsServer) -> None:
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(
            nats_server.url, user=NATS_ADMIN.user, password="wrong", allow_reconnect=False
        )


def test_nats_stop_frees_ports_and_is_idempotent(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, [NATS_ADMIN], sync_interval="always")
    server.start()
    assert server.is_running()
    assert not port_is_free(server.port)
    server.stop()
    server.stop()
    assert not server.is_running()
    assert server.returncode == 0
    assert port_is_free(server.port)
    assert port_is_free(server.monitor_port)


def test_stop_pid_stops_a_server_by_pid(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    server.start()
    assert server.pid is not None
    assert stop_pid(server.pid, timeout=10)
    # The exited child is our zombie until reaped: stop_pid must not wait for it.
    assert not server.is_running()
    assert not stop_pid(server.pid, timeout=1)
    server.stop()


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(ServerStartError, match="exited with code") as caught:
            server.start()
    assert "address already in use" in str(caught.value)
    assert not server.is_running()


# --- S3 (SeaweedFS) --------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def s3_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3"), [S3_ADMIN, S3_RAW_ONLY]) as server:
        # Right after start(): readiness must cover what CreateBucket needs.
        async with s3_client(server, S3_ADMIN) as s3:
            await s3.create_bucket(Bucket="raw")
            await s3.create_bucket(Bucket="curated")
        yield server


def s3_client(server: S3Server, identity: S3Identity | None) -> "ClientCreatorContext[S3Client]":
    """A client signing with `identity`'s keys, or an unsigned (anonymous) one for None."""
    config = AioConfig(
        retries={"max_attempts": 1},
        signature_version=UNSIGNED if identity is None else None,
    )
    return aioboto3.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=identity.access_key if identity else "anonymous",
        aws_secret_access_key=identity.secret_key if identity else "anonymous",
        config=config,
    )


async def test_s3_put_get_list(s3_server: S3Server) -> None:
    async with s3_client(s3_server, S3_RAW_ONLY) as s3:
        await s3.put_object(Bucket="raw", Key="events/1.json", Body=b'{"n": 1}')
        got = await s3.get_object(Bucket="raw", Key="events/1.json")
        assert await got["Body"].read() == b'{"n": 1}'
        listed = await s3.list_objects_v2(Bucket="raw", Prefix="events/")
        assert [obj.get("Key") for obj in listed.get("Contents", [])] == ["events/1.json"]


async def test_s3_bucket_scoped_key_is_refused_elsewhere(s3_server: S3Server) -> None:
    async with s3_client(s3_server, S3_ADMIN) as admin:
        await admin.put_object(Bucket="curated", Key="report.json", Body=b"{}")
    async with s3_client(s3_server, S3_RAW_ONLY) as s3:
        await s3.put_object(Bucket="raw", Key="ok.json", Body=b"{}")
        with pytest.raises(ClientError) as put:
            await s3.put_object(Bucket="curated", Key="sneaky.json", Body=b"{}")
        with pytest.raises(ClientError) as get:
            await s3.get_object(Bucket="curated", Key="report.json")
        with pytest.raises(ClientError) as listing:
            await s3.list_objects_v2(Bucket="curated")
        with pytest.raises(ClientError) as create:
            await s3.create_bucket(Bucket="elsewhere")
    for refused in (put, get, listing, create):
        assert refused.value.response.get("Error", {}).get("Code") == "AccessDenied"


async def test_s3_refuses_anonymous_requests(s3_server: S3Server) -> None:
    async with s3_client(s3_server, S3_ADMIN) as admin:
        await admin.put_object(Bucket="raw", Key="private.json", Body=b"{}")
    async with s3_client(s3_server, None) as anonymous:
        with pytest.raises(ClientError) as get:
            await anonymous.get_object(Bucket="raw", Key="private.json")
        with pytest.raises(ClientError) as put:
            await anonymous.put_object(Bucket="raw", Key="anon.json", Body=b"{}")
    for refused in (get, put):
        assert refused.value.response.get("Error", {}).get("Code") == "AccessDenied"


@pytest.mark.parametrize("stop_timeout", [10.0, 0.0], ids=["sigterm", "sigkill"])
def test_s3_stop_frees_ports_and_sockets(tmp_path: Path, stop_timeout: float) -> None:
    server = S3Server(tmp_path, [S3_ADMIN])
    server.start()
    assert not port_is_free(server.port)
    server.stop(timeout=stop_timeout)
    assert not server.is_running()
    ours = set(server.all_ports) | {p + GRPC_OFFSET for p in server.all_ports}
    for port in ours:
        assert port_is_free(port), port
    left = [
        path.name
        for path in Path("/tmp").glob("seaweedfs-*.sock")
        if int(path.stem.rpartition("-")[2]) in ours
    ]
    assert left == []


# --- PostgreSQL ------------------------------------------------------------------------------


def postgres_bindirs() -> list[Path]:
    """The preferred binaries, plus pgserver's bundled ones: machines without a system
    PostgreSQL rely on those."""
    bindirs = [find_bindir()]
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if bundled.is_dir() and bundled.resolve() != bindirs[0].resolve():
            bindirs.append(bundled)
    return bindirs


@pytest.mark.parametrize("bindir", postgres_bindirs(), ids=lambda p: str(p.parent.name))
async def test_postgres_password_restart_and_stop(bindir: Path) -> None:
    # A private (0700) parent, as root's home and `mktemp -d` are: as root the cluster is kept
    # where PostgreSQL's user can reach it, and found there again on the next start.
    private = Path(tempfile.mkdtemp(prefix="choreo-pg-test-"))
    data_dir = private / "pgdata"
    try:
        first = PostgresServer(data_dir, PG_PASSWORD, bindir=bindir)
        with first:
            conn = await asyncpg.connect(first.admin_dsn)
            try:
                assert await conn.fetchval("select 1") == 1
                await conn.execute("create table survives_restart (x int)")
            finally:
                await conn.close()
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(first.dsn(password="wrong"))
        assert first.pid is not None
        assert process_group(first.pid) == []
        assert port_is_free(first.port)

        log = first.log_path.read_text()
        second = PostgresServer(data_dir, PG_PASSWORD, bindir=bindir)
        assert second.data_dir == first.data_dir
        with second:
            conn = await asyncpg.connect(second.admin_dsn)
            try:
                assert await conn.fetchval("select count(*) from survives_restart") == 0
            finally:
                await conn.close()
        assert second.pid is not None
        assert process_group(second.pid) == []
        banner = "The files belonging to this database system"
        assert log.count(banner) == second.log_path.read_text().count(banner) == 1
    finally:
        remove_cluster(data_dir)
        shutil.rmtree(private, ignore_errors=True)
    assert not await asyncio.to_thread(first.data_dir.exists)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_postgres_keeps_a_private_data_dir_s_cluster_under_var_tmp() -> None:
    private = Path(tempfile.mkdtemp(prefix="choreo-pg-private-"))
    data_dir = private / "pgdata"
    try:
        server = PostgresServer(data_dir, PG_PASSWORD)
        assert data_dir.is_symlink()  # the record of where the cluster is
        assert server.data_dir == data_dir.resolve()
        assert server.data_dir.parent == RELOCATION_PARENTS[0]
        assert server.data_dir.name.startswith(CLUSTER_PREFIX)
        owner = pwd.getpwnam("postgres")
        assert server.data_dir.stat().st_uid == owner.pw_uid
        assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
    finally:
        remove_cluster(data_dir)
        shutil.rmtree(private, ignore_errors=True)
    assert not server.data_dir.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to another user")
def test_postgres_explains_an_existing_data_dir_its_user_cannot_reach() -> None:
    """Something already in the data dir (a cluster made before the parent was closed) is
    not moved: the error names the directory in the way."""
    private = Path(tempfile.mkdtemp(prefix="choreo-pg-private-"))
    try:
        (private / "pgdata").mkdir()
        (private / "pgdata" / "PG_VERSION").write_text("15\n")
        with pytest.raises(PermissionError, match=str(private)):
            PostgresServer(private / "pgdata", PG_PASSWORD)
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(private, ignore_errors=True)


def test_postgres_binaries_out_of_reach_are_copied_where_its_user_can_run_them(
    tmp_path: Path,
) -> None:
    """pgserver's binaries in a venv under a 0700 directory: copied once to /var/tmp, beside
    the libraries the wheel bundles (the binaries' RPATH is `$ORIGIN/../../../pgserver.libs`)."""
    if os.geteuid() != 0:
        pytest.skip("only root runs PostgreSQL as another user")
    install = tmp_path / "pgserver" / "pginstall"
    (install / "bin").mkdir(parents=True)
    (install / "bin" / "postgres").write_text("#!/bin/sh\n")
    (tmp_path / "pgserver.libs").mkdir()
    (tmp_path / "pgserver.libs" / "libpq-0.so.5").write_text("lib")
    owner = pwd.getpwnam("postgres")
    copied = reachable_bindir(install / "bin", owner)
    copy = copied.parents[2]
    try:
        assert copy.name.startswith(BINARIES_PREFIX)
        assert (copied / "postgres").read_text() == "#!/bin/sh\n"
        assert (copied / "../../../pgserver.libs/libpq-0.so.5").read_text() == "lib"
        assert reachable_bindir(install / "bin", owner) == copied  # made once
        assert reachable_bindir(find_bindir(), owner) == find_bindir()  # reachable: as is
    finally:
        shutil.rmtree(copy)
