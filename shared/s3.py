"""An aioboto3 S3 client configured from settings (SeaweedFS, MinIO or AWS)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aioboto3
from aiobotocore.config import AioConfig

from shared.settings import Settings
from shared.slot import Slot

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client


@asynccontextmanager
async def s3_client(settings: Settings) -> AsyncIterator["S3Client"]:
    """An S3 client for the configured endpoint, with retries and path-style addressing."""
    settings.require("s3_endpoint_url", "s3_access_key", "s3_secret_key")
    assert settings.s3_access_key is not None
    assert settings.s3_secret_key is not None
    session = aioboto3.Session()
    async with session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.s3_access_key.get_secret_value(),
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        region_name=settings.s3_region,
        config=AioConfig(
            # SigV4: botocore would presign with the legacy SigV2 in us-east-1.
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    ) as client:
        yield client


@asynccontextmanager
async def open_s3(settings: Settings, slot: "Slot[S3Client]") -> AsyncIterator["S3Client"]:
    """A service resource: the S3 client, put in `slot` for handlers while it is open."""
    async with s3_client(settings) as s3:
        slot.set(s3)
        try:
            yield s3
        finally:
            slot.set(None)


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key); ValueError naming what is wrong."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ValueError(f"an s3 URI needs a bucket and a key: {uri!r}")
    return bucket, key


async def list_entries(
    s3: "S3Client", bucket: str, prefix: str, *, recursive: bool, limit: int
) -> list[dict[str, Any]]:
    """The buckets (no bucket given), else objects and, one level deep unless `recursive`,
    folders under `prefix`: each `{"uri", "bytes", "modified"}` (no size or time for a
    bucket's folders), at most `limit`."""
    if not bucket:
        found = (await s3.list_buckets()).get("Buckets", [])
        return [_entry(f"s3://{b['Name']}/", None, b.get("CreationDate")) for b in found]
    entries: list[dict[str, Any]] = []
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket,
        Prefix=prefix,
        Delimiter="" if recursive else "/",
        PaginationConfig={"MaxItems": limit},
    )
    async for page in pages:
        for folder in page.get("CommonPrefixes", []):
            entries.append(_entry(s3_uri(bucket, folder["Prefix"]), None, None))
        for item in page.get("Contents", []):
            entries.append(
                _entry(s3_uri(bucket, item["Key"]), item["Size"], item.get("LastModified"))
            )
    return entries[:limit]


def _entry(uri: str, size: int | None, modified: datetime | None) -> dict[str, Any]:
    when = None if modified is None else modified.astimezone(UTC).isoformat(timespec="seconds")
    return {"uri": uri, "bytes": size, "modified": when}
