"""The step kinds the store service runs: `store.put` and `store.promote`.

Keys are the workflow's own, so a repeated attempt rewrites the same object: the effect
happens once however often the step runs.
"""

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from shared.envelope import Event
from shared.lake import LAYERS, layer_bucket, relative_key
from shared.objects import object_written
from shared.s3 import parse_s3_uri, s3_uri
from shared.settings import Settings
from shared.workflow.steps import StepContext, StepFailed, StepOutput, StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client


Announce = Callable[[Event], Awaitable[None]]


def store_steps(
    steps: StepRegistry,
    s3: Callable[[], "S3Client"],
    settings: Settings,
    announce: Announce | None = None,
) -> None:
    """Register store's step kinds on `steps`; `announce` publishes the
    `lake.object.written` event of each object they write."""

    async def written(bucket: str, key: str, size: int | None, version: str, by: str) -> None:
        if announce is not None:
            await announce(
                object_written(
                    bucket, key, size=size, version=version, source="choreo/store", by=by
                )
            )

    def bucket_of(params: dict[str, Any]) -> str:
        if "bucket" in params:
            return str(params["bucket"])
        return layer_bucket(settings, params.get("layer"), LAYERS)

    @steps.kind("store.put")
    async def put(ctx: StepContext) -> StepOutput:
        """Write inline `data` (as JSON) or `text` to `bucket`/`layer` at `key`."""
        bucket, key = bucket_of(ctx.params), relative_key(ctx.params["key"])
        if "data" in ctx.params:
            body = (json.dumps(ctx.params["data"], indent=2) + "\n").encode()
            content_type = "application/json"
        else:
            body = str(ctx.params["text"]).encode()
            content_type = "text/plain; charset=utf-8"
        sha256 = hashlib.sha256(body).hexdigest()
        response = await s3().put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            Metadata=_lineage(ctx, sha256),
        )
        ctx.log.info("wrote", uri=s3_uri(bucket, key), bytes=len(body))
        await written(bucket, key, len(body), sha256, "store.put")
        return {
            "uri": s3_uri(bucket, key),
            "etag": response["ETag"].strip('"'),
            "sha256": sha256,
            "bytes": len(body),
        }

    @steps.kind("store.promote")
    async def promote(ctx: StepContext) -> StepOutput:
        """Copy the object at `from` into `layer` under `key`, with lineage metadata."""
        try:
            source_bucket, source_key = parse_s3_uri(str(ctx.params["from"]))
        except ValueError as exc:
            raise StepFailed(f"with.from: {exc}") from exc
        bucket, key = bucket_of(ctx.params), relative_key(ctx.params["key"])
        digest = hashlib.sha256()
        source = await s3().get_object(Bucket=source_bucket, Key=source_key)
        async for chunk in source["Body"].iter_chunks(1024 * 1024):
            digest.update(chunk)
        sha256 = digest.hexdigest()
        metadata = {**_lineage(ctx, sha256), "source-uri": s3_uri(source_bucket, source_key)}
        await s3().copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": source_bucket, "Key": source_key},
            Metadata=metadata,
            MetadataDirective="REPLACE",
        )
        ctx.log.info("promoted", source=s3_uri(source_bucket, source_key), uri=s3_uri(bucket, key))
        await written(bucket, key, None, sha256, "store.promote")
        return {"uri": s3_uri(bucket, key), "sha256": sha256}


def _lineage(ctx: StepContext, sha256: str) -> dict[str, str]:
    return {"run-id": ctx.runid, "step-id": ctx.step, "sha256": sha256}
