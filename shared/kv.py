"""JetStream KV plumbing shared by the buckets Choreo keeps (run state, deployments,
schedules): open-or-create, reads that tell "absent" from "deleted", and server-side key
filtering."""

import json
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from shared.settings import Settings


async def ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Open `config.bucket`, creating it when missing. Creating with an identical config is
    idempotent in JetStream, so two services racing both succeed."""
    try:
        return await js.key_value(config.bucket)
    except BucketNotFoundError:
        pass
    return await js.create_key_value(config)


async def open_bucket(
    js: JetStreamContext,
    settings: Settings,
    bucket: str,
    description: str,
    *,
    ttl: float | None = None,
) -> KeyValue:
    """A file-backed bucket keeping the latest value of each key, replicated as the streams
    are; created when missing."""
    return await ensure_kv(
        js,
        KeyValueConfig(
            bucket=bucket,
            description=description,
            history=1,
            ttl=ttl,
            storage=StorageType.FILE,
            replicas=settings.stream_replicas,
        ),
    )


def dump(value: Any) -> bytes:
    """Compact JSON, as every Choreo bucket stores its values."""
    return json.dumps(value, separators=(",", ":")).encode()


async def get_entry(kv: KeyValue, key: str) -> tuple[bytes, int] | None:
    """The value and revision at `key`, or None when absent or deleted."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if entry.value is None or entry.revision is None:
        return None
    return entry.value, entry.revision


async def keys_matching(kv: KeyValue, pattern: str) -> list[str]:
    """Keys matching a subject pattern, filtered by the server. (nats-py's
    `KeyValue.keys(filters=...)` reads every key of the bucket and matches substrings.)"""
    return list(await _current(kv, pattern, meta_only=True))


async def values_matching(kv: KeyValue, pattern: str) -> dict[str, bytes]:
    """The current value of every key matching a subject pattern, filtered by the server."""
    return {key: value or b"" for key, value in (await _current(kv, pattern)).items()}


async def _current(
    kv: KeyValue, pattern: str, *, meta_only: bool = False
) -> dict[str, bytes | None]:
    watcher = await kv.watch(pattern, ignore_deletes=True, meta_only=meta_only)
    found: dict[str, bytes | None] = {}
    try:
        async for entry in watcher:
            if entry is None:  # the end of the current values
                break
            found[entry.key] = entry.value
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
    return found
