"""The lake lander on real servers: events land in the raw bucket exactly once, also across
a failed acknowledgement and a SIGKILL; the presign endpoint; `choreo get`.

Every test lands its own event types, so it reads only its own objects of the shared raw
bucket, whatever else the session's `store-lander` consumer carries.
"""

import asyncio
import gzip
import hashlib
import json
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from typer.testing import CliRunner

from choreo.cli import app as cli
from choreo.servers.ports import free_port
from choreo.stack import ServiceProcess
from services.store.app import create_app as store_app
from services.store.buckets import ensure_buckets
from services.store.lake import Lake
from services.store.lander import LakeObject
from services.store.settings import StoreSettings
from shared.access import STORE_LANDER
from shared.envelope import Event
from shared.jetstream import ensure_streams
from shared.lake import seq_range
from shared.s3 import s3_client
from shared.settings import Settings
from shared.subjects import LAKE, OBJECT_WRITTEN
from tests.server_support import dead_letter
from tests.support import serve, settings_env, start_process, stop_process, wait_for

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

pytestmark = pytest.mark.integration

DAY = datetime(2024, 1, 15, 18, tzinfo=UTC)


def unique_type(label: str) -> str:
    return f"{label}_{uuid.uuid4().hex[:10]}"


def store_settings(settings: Settings, **changes: Any) -> StoreSettings:
    # Small, quick flushes: several objects per test, written well within ack_wait (2 s).
    values = {"lander_max_events": 1_000, "lander_max_age_s": 0.3, **changes}
    return StoreSettings.model_validate({**settings.model_dump(), **values})


def make_events(types: list[str], count: int) -> list[Event]:
    """`count` events spread over `types` and two UTC dates, interleaved in the stream."""
    return [
        Event(
            id=f"{types[n % len(types)]}-{n}",
            type=types[n % len(types)],
            source="tests",
            time=DAY + timedelta(hours=12 * (n % 3 == 0)),  # 2024-01-15 or 2024-01-16
            data={"n": n},
        )
        for n in range(count)
    ]


@asynccontextmanager
async def jetstream(settings: Settings) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(settings.nats_url)
    try:
        js = client.jetstream()
        await ensure_streams(js, settings)
        yield js
    finally:
        await client.close()


async def publish(js: JetStreamContext, events: list[Event], batch: int = 500) -> None:
    """In batches: each batch's publishes in flight together, acknowledged before the next."""
    for start in range(0, len(events), batch):
        await asyncio.gather(
            *(
                js.publish(f"data.{e.type}", e.to_bytes(), headers=e.headers())
                for e in events[start : start + batch]
            )
        )


class LakeReader:
    """Reads the lander's objects of some event types; each object is fetched once (the
    lander never rewrites one)."""

    def __init__(self, s3: "S3Client", bucket: str, types: list[str]) -> None:
        self.s3, self.bucket, self.types = s3, bucket, types
        self.objects: dict[str, list[str]] = {}  # key -> lines

    async def keys(self) -> list[str]:
        found = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for event_type in self.types:
            pages = paginator.paginate(Bucket=self.bucket, Prefix=f"events/{event_type}/")
            async for page in pages:
                found += [item["Key"] for item in page.get("Contents", [])]
        return found

    async def read(self) -> dict[str, list[str]]:
        for key in await self.keys():
            if key not in self.objects:
                got = await self.s3.get_object(Bucket=self.bucket, Key=key)
                body = gzip.decompress(await got["Body"].read())
                self.objects[key] = body.decode().splitlines()
        return self.objects

    async def ids(self) -> list[str]:
        return [json.loads(line)["id"] for lines in (await self.read()).values() for line in lines]


async def consumer_idle(js: JetStreamContext) -> bool:
    """Nothing left to deliver and nothing delivered but unacknowledged: no more writes."""
    info = await js.consumer_info("DATA", STORE_LANDER)
    return (info.num_pending, info.num_ack_pending) == (0, 0)


async def landed_exactly_once(js: JetStreamContext, lake: LakeReader, events: list[Event]) -> None:
    """Wait for every event, then for the consumer to settle, then check the whole lake."""
    expected = {e.id for e in events}
    await wait_for(lake.ids, lambda ids: expected <= set(ids), within=60)
    await wait_for(lambda: consumer_idle(js), bool, within=30)
    ids = await lake.ids()
    assert len(ids) == len(expected), f"{len(ids) - len(set(ids))} duplicated lines"
    assert set(ids) == expected
    by_id = {e.id: e for e in events}
    for key, lines in lake.objects.items():
        first, last = seq_range(key) or (0, 0)
        assert first <= last, key
        for line in lines:
            event = by_id[json.loads(line)["id"]]
            assert key.startswith(f"events/{event.type}/date={event.time.date().isoformat()}/")
            assert Event.from_bytes(line) == event


async def test_ten_thousand_events_land_exactly_once(settings: Settings) -> None:
    base = unique_type("landing")
    types = [f"{base}_a", f"{base}_b"]
    events = make_events(types, 10_000)
    config = store_settings(settings)
    async with (
        jetstream(settings) as js,
        s3_client(settings) as s3,
        serve(store_app(config)) as http,
    ):
        await publish(js, events)
        lake = LakeReader(s3, settings.bucket_raw, types)
        await landed_exactly_once(js, lake, events)
        metrics = (await http.get("/metrics")).text
        some_key = sorted(lake.objects)[0]
        head = await s3.head_object(Bucket=settings.bucket_raw, Key=some_key)
    assert len(lake.objects) >= 10  # buffers of 1,000 at most
    for event_type in types:
        landed = sum(1 for e in events if e.type == event_type)
        assert f'choreo_lake_events_landed_total{{type="{event_type}"}} {landed}.0' in metrics
    assert head["ContentType"] == "application/gzip"
    assert head["Metadata"]["events"] == str(len(lake.objects[some_key]))
    assert (head["Metadata"]["first-seq"], head["Metadata"]["last-seq"]) == tuple(
        str(s) for s in seq_range(some_key) or ()
    )


class AckLostLake(Lake):
    """Writes each object of `event_type`, then fails as if the lander died before acking:
    the batch is nak'd and redelivered although its objects are in the lake."""

    def __init__(self, s3: "S3Client", bucket: str, event_type: str) -> None:
        super().__init__(lambda: s3, bucket)
        self.event_type = event_type
        self.written: list[str] = []

    async def put(self, obj: LakeObject) -> int:
        size = await super().put(obj)
        if obj.group.type == self.event_type:
            self.written.append(obj.key)
            raise ConnectionError("lost the connection after writing (test)")
        return size


async def announcements(js: JetStreamContext, prefix: str) -> list[dict[str, Any]]:
    """The data of the `lake.object.written` events in stream LAKE for keys under `prefix`."""
    sub = await js.pull_subscribe(
        OBJECT_WRITTEN, stream=LAKE.name, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    found = []
    try:
        while True:
            try:
                batch = await sub.fetch(500, timeout=0.5)
            except (NatsTimeout, TimeoutError):
                break
            written = [json.loads(m.data)["data"] for m in batch]
            found += [data for data in written if str(data["key"]).startswith(prefix)]
            if batch[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found


async def test_a_batch_written_but_not_acknowledged_lands_once(settings: Settings) -> None:
    """Also announced once: the write succeeded and the lander failed before announcing, so
    every object is announced by the redelivery that finds it."""
    event_type = unique_type("acklost")
    events = make_events([event_type], 2_000)
    # Enough deliveries that a batch failing more than once is still retried, not dead-lettered.
    config = store_settings(settings, max_deliver=10)
    async with jetstream(settings) as js, s3_client(settings) as s3:
        faulty = AckLostLake(s3, settings.bucket_raw, event_type)
        async with serve(store_app(config, lake=faulty)) as http:
            await publish(js, events)
            lake = LakeReader(s3, settings.bucket_raw, [event_type])
            await landed_exactly_once(js, lake, events)
            metrics = (await http.get("/metrics")).text
    assert sorted(faulty.written) == sorted(lake.objects), "an object was written twice"
    already = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("choreo_lake_events_already_landed_total")
    )
    assert already >= len(events)  # every event came back once and was found in the lake
    async with jetstream(settings) as js:
        announced = await wait_for(
            lambda: announcements(js, f"events/{event_type}/"),
            lambda found: len(found) >= len(lake.objects),
        )
    assert sorted(data["key"] for data in announced) == sorted(lake.objects)
    assert {data["by"] for data in announced} == {"lander"}


async def test_a_lander_killed_mid_stream_and_restarted_lands_everything_once(
    settings: Settings,
) -> None:
    """SIGKILL the store service while events stream in, start it again: every event is in
    exactly one object."""
    event_type = unique_type("killed")
    events = make_events([event_type], 10_000)
    env = {
        **os.environ,
        **settings_env(settings),
        "CHOREO_LANDER_MAX_EVENTS": "500",
        "CHOREO_LANDER_MAX_AGE_S": "0.3",
    }
    log = settings.data_dir / "store.log"

    def store_process() -> ServiceProcess:
        env["CHOREO_HTTP_PORT"] = str(free_port())
        return ServiceProcess("store", int(env["CHOREO_HTTP_PORT"]), env, log)

    async with jetstream(settings) as js, s3_client(settings) as s3:
        lake = LakeReader(s3, settings.bucket_raw, [event_type])
        first = store_process()
        await start_process(first)
        publishing = asyncio.create_task(publish(js, events, batch=250))
        try:
            await wait_for(lake.keys, bool, within=30, interval=0.01)
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)
            await stop_process(first)
            at_kill = len(await lake.ids())
            assert at_kill < len(events), "the kill came after everything landed: nothing tested"
            second = store_process()
            await start_process(second)
            try:
                await publishing
                await landed_exactly_once(js, lake, events)
            finally:
                await stop_process(second)
        finally:
            publishing.cancel()
    assert first.returncode == -signal.SIGKILL


async def test_a_message_that_is_not_an_event_goes_to_dlq_store(settings: Settings) -> None:
    marker = f"not-an-event-{uuid.uuid4()}"
    async with jetstream(settings) as js, serve(store_app(store_settings(settings))):
        ack = await js.publish(f"data.{unique_type('garbage')}", marker.encode())
        dead = await dead_letter(js, "store", marker)
    assert dead["stream_seq"] == ack.seq
    assert "not a valid event envelope" in dead["reason"]


async def test_presigned_download_url_round_trip(settings: Settings) -> None:
    key = f"presign/{uuid.uuid4().hex}.json"
    body = b'{"hello": "lake"}\n'
    uri = f"s3://{settings.bucket_curated}/{key}"
    config = store_settings(settings, lander_enabled=False)
    async with s3_client(settings) as s3, serve(store_app(config)) as http:
        await s3.put_object(Bucket=settings.bucket_curated, Key=key, Body=body)
        answer = await http.get("/v1/objects/presign", params={"uri": uri, "expires": 60})
        missing = await http.get("/v1/objects/presign", params={"uri": f"{uri}.nope"})
        no_bucket = await http.get("/v1/objects/presign", params={"uri": "s3://nope-x/k"})
        bad = await http.get("/v1/objects/presign", params={"uri": "http://x/y"})
        too_long = await http.get("/v1/objects/presign", params={"uri": uri, "expires": 10**7})
    assert answer.status_code == 200, answer.text
    presigned = answer.json()
    assert (presigned["uri"], presigned["expires_in"], presigned["bytes"]) == (uri, 60, len(body))
    signature = re.search(r"Signature=([^&]+)", presigned["url"])
    assert signature is not None, presigned["url"]
    forged = presigned["url"].replace(signature[1], "A" * len(signature[1]))
    async with httpx.AsyncClient() as client:
        download = await client.get(presigned["url"])
        unsigned = await client.get(presigned["url"].split("?")[0])
        tampered = await client.get(forged)
    assert (download.status_code, download.content) == (200, body)
    # The URL is what grants access: without its signature, or with a forged one, no object.
    assert (unsigned.status_code, tampered.status_code) == (403, 403)
    assert (missing.status_code, no_bucket.status_code) == (404, 404)
    assert missing.json()["detail"] == f"no object at {uri}.nope"
    assert bad.status_code == 400
    assert "not an s3:// URI" in bad.json()["detail"]
    assert too_long.status_code == 422


async def test_choreo_get_downloads_to_stdout_and_to_a_file(
    settings: Settings, tmp_path: Path
) -> None:
    key = f"get/{uuid.uuid4().hex}.bin"
    small = b"line one\nline two\n"
    large = os.urandom(9 * 1024 * 1024)  # several chunks
    async with s3_client(settings) as s3:
        await ensure_buckets(s3, [settings.bucket_staging])  # no store runs here
        await s3.put_object(Bucket=settings.bucket_staging, Key=f"{key}.small", Body=small)
        await s3.put_object(Bucket=settings.bucket_staging, Key=key, Body=large)
    assert settings.s3_access_key is not None
    assert settings.s3_secret_key is not None
    env = {
        "CHOREO_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "CHOREO_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
        "CHOREO_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
    }
    uri = f"s3://{settings.bucket_staging}/{key}"
    target = tmp_path / "out" / "large.bin"
    target.parent.mkdir()

    def choreo(*args: str) -> Any:
        # In a thread: the command runs its own event loop.
        return CliRunner().invoke(cli, [*args, "--data-dir", str(tmp_path)], env=env)

    to_stdout = await asyncio.to_thread(choreo, "get", f"{uri}.small")
    to_file = await asyncio.to_thread(choreo, "get", uri, "-o", str(target), "--json")
    missing = await asyncio.to_thread(choreo, "get", f"{uri}.nope", "-o", str(target) + ".x")
    bad = await asyncio.to_thread(choreo, "get", "s3://only-a-bucket")

    assert to_stdout.exit_code == 0, to_stdout.output
    assert to_stdout.stdout_bytes == small
    assert to_file.exit_code == 0, to_file.output
    assert target.read_bytes() == large
    described = json.loads(to_file.stdout)
    assert described["bytes"] == len(large)
    assert described["sha256"] == hashlib.sha256(large).hexdigest()
    assert missing.exit_code == 1
    assert f"no object at {uri}.nope" in missing.stderr
    assert list(target.parent.iterdir()) == [target]  # no partial file left behind
    assert bad.exit_code == 2
    assert "needs a bucket and a key" in bad.stderr

    listed = await asyncio.to_thread(choreo, "ls", f"s3://{settings.bucket_staging}/get/", "--json")
    assert listed.exit_code == 0, listed.output
    entries = {e["uri"]: e["bytes"] for e in json.loads(listed.stdout)}
    assert entries[uri] == len(large)
    assert entries[f"{uri}.small"] == len(small)
    folders = await asyncio.to_thread(choreo, "ls", f"s3://{settings.bucket_staging}/", "--json")
    assert {"uri": f"s3://{settings.bucket_staging}/get/", "bytes": None, "modified": None} in (
        json.loads(folders.stdout)
    )
    deep = await asyncio.to_thread(choreo, "ls", "-r", f"s3://{settings.bucket_staging}/", "--json")
    assert uri in {e["uri"] for e in json.loads(deep.stdout)}
    buckets = await asyncio.to_thread(choreo, "ls", "--json")
    assert f"s3://{settings.bucket_staging}/" in {e["uri"] for e in json.loads(buckets.stdout)}
    table = await asyncio.to_thread(choreo, "ls", f"s3://{settings.bucket_staging}/get/")
    assert uri in table.stdout  # whole, on one line: output to a pipe is not wrapped
    no_bucket = await asyncio.to_thread(choreo, "ls", "s3://no-such-bucket-here/")
    assert no_bucket.exit_code == 1
    assert "no bucket at s3://no-such-bucket-here/" in no_bucket.stderr


async def test_presigned_urls_can_point_at_the_address_clients_use(settings: Settings) -> None:
    key = f"presign/{uuid.uuid4().hex}.json"
    public = "http://lake.example.com:9000"
    config = store_settings(settings, lander_enabled=False, store_presign_endpoint_url=public)
    async with s3_client(settings) as s3, serve(store_app(config)) as http:
        await s3.put_object(Bucket=settings.bucket_curated, Key=key, Body=b"{}")
        uri = f"s3://{settings.bucket_curated}/{key}"
        answer = await http.get("/v1/objects/presign", params={"uri": uri})
    assert answer.status_code == 200, answer.text
    assert answer.json()["url"].startswith(f"{public}/{settings.bucket_curated}/{key}?")
