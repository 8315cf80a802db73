"""The lake's object store: a round trip and idempotent bucket creation on a real server."""

import hashlib
import uuid

import pytest

from services.store.buckets import ensure_buckets
from shared.s3 import s3_client
from shared.settings import Settings

pytestmark = pytest.mark.integration


async def test_round_trip_and_idempotent_buckets(settings: Settings) -> None:
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    body = b'{"hello": "lake"}\n' * 1000
    async with s3_client(settings) as s3:
        assert await ensure_buckets(s3, [bucket]) == [bucket]
        assert await ensure_buckets(s3, [bucket]) == []  # the second time creates nothing
        put = await s3.put_object(Bucket=bucket, Key="events/a.jsonl", Body=body)
        got = await s3.get_object(Bucket=bucket, Key="events/a.jsonl")
        assert await got["Body"].read() == body
        assert put["ETag"].strip('"') == hashlib.md5(body).hexdigest()  # noqa: S324 - S3's ETag
        listed = await s3.list_objects_v2(Bucket=bucket, Prefix="events/")
        assert [o["Key"] for o in listed.get("Contents", [])] == ["events/a.jsonl"]
        await s3.delete_object(Bucket=bucket, Key="events/a.jsonl")
        listed = await s3.list_objects_v2(Bucket=bucket, Prefix="events/")
        assert listed.get("KeyCount", 0) == 0
