"""JetStream KV plumbing shared by the buckets Choreo keeps (run state, deployments,
schedules): open-or-create, reads that tell "absent" from "deleted", and server-side key
filtering."""

import json
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from shared.settings import Settings

READ_TIMEOUT_S = 10.0
"""How long a read of a bucket's current values waits for the next one the server sent."""
MARKER_REASON = "Nats-Marker-Reason"


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
    """The current entries under `pattern`, deleted ones left out.

    nats-py's `watch()` is not used: it signals "no more current values" from a consumer
    info read while the first values may be delivered but not yet handed to its callback,
    and then misses them (seen under load: a step kind registered a moment before read as
    unknown). Here the end is the server's own count: the consumer says how many values it
    delivered, and the last one carries `num_pending == 0`. nats-py keeps the bucket's
    stream, subject prefix and JetStream context private; they are read from it."""
    prefix: str = kv._pre
    subscription = await kv._js.subscribe(
        prefix + pattern,
        stream=kv._stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        headers_only=meta_only,
        inactive_threshold=60.0,
    )
    found: dict[str, bytes | None] = {}
    try:
        info = await subscription.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else 0
        if info.num_pending == 0 and not delivered:
            return found
        while True:
            msg = await subscription.next_msg(timeout=READ_TIMEOUT_S)
            if not _is_removal(msg.headers or {}):
                found[msg.subject.removeprefix(prefix)] = msg.data
            if msg.metadata.num_pending == 0:
                return found
    finally:
        await subscription.unsubscribe()


def _is_removal(headers: dict[str, str]) -> bool:
    """A delete or purge marker: the client's own, or one the server placed (TTL, age)."""
    return headers.get(KV_OP) in (KV_DEL, KV_PURGE) or MARKER_REASON in headers
