"""The store's HTTP API: the lake read by people and tools: listings, object metadata,
previews of the first rows, and presigned download URLs."""

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from botocore.exceptions import ClientError
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from services.store.preview import (
    MAX_WHOLE_BYTES,
    PREVIEW_ROWS,
    WHOLE,
    NotPreviewable,
    Preview,
    csv_preview,
    json_preview,
    jsonl_preview,
    object_format,
    parquet_preview,
    text_lines,
)
from shared.s3 import list_entries, parse_s3_uri

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

# The longest a SigV4 presigned URL may live (7 days).
MAX_EXPIRES_S = 7 * 24 * 3600
# What S3 servers answer for a missing key or bucket (HEAD answers a bare status code).
MISSING = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


MAX_LISTED = 1000
CHUNK = 64 * 1024


class Entry(BaseModel):
    uri: str
    bytes: int | None
    modified: str | None


class ObjectMeta(BaseModel):
    uri: str
    bytes: int
    modified: str
    content_type: str | None
    etag: str | None
    metadata: dict[str, str]


class Presigned(BaseModel):
    url: str
    uri: str
    expires_in: int
    bytes: int


def objects_router(s3: Callable[[], "S3Client"], signer: Callable[[], "S3Client"]) -> APIRouter:
    """`s3` checks that the object exists; `signer` signs (its endpoint is the URL's host)."""
    router = APIRouter(prefix="/v1/objects", tags=["objects"])

    @router.get(
        "/presign",
        response_model=Presigned,
        summary="A time-limited download URL for an object",
        responses={
            400: {"description": "not an s3:// URI"},
            404: {"description": "no object at that URI"},
            502: {"description": "S3 refused the request (e.g. access denied)"},
        },
    )
    async def presign(
        uri: Annotated[str, Query(description="s3://bucket/key")],
        expires: Annotated[
            int, Query(ge=1, le=MAX_EXPIRES_S, description="seconds the URL stays valid")
        ] = 3600,
    ) -> Presigned:
        bucket, key = _parse(uri)
        head = await _head(s3(), bucket, key, uri)
        url = await signer().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
        )
        return Presigned(url=url, uri=uri, expires_in=expires, bytes=head["ContentLength"])

    @router.get(
        "",
        response_model=list[Entry],
        summary="Buckets, or the folders and objects under a prefix",
        description="Without `uri`: the buckets. With `s3://bucket/prefix`: the folders one "
        "level below the prefix (no size) and the objects in it, at most `limit`.",
        responses={
            400: {"description": "not an s3://bucket/prefix URI"},
            502: {"description": "S3 refused the request (e.g. no such bucket)"},
        },
    )
    async def list_objects(
        uri: Annotated[str | None, Query(description="s3://bucket/ or s3://bucket/prefix/")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = MAX_LISTED,
    ) -> list[dict[str, Any]]:
        bucket, prefix = "", ""
        if uri is not None:
            if not uri.startswith("s3://") or not uri[len("s3://") :].split("/", 1)[0]:
                raise HTTPException(400, f"uri: not an s3://bucket/prefix URI: {uri!r}")
            bucket, _, prefix = uri[len("s3://") :].partition("/")
        try:
            return await list_entries(s3(), bucket, prefix, recursive=False, limit=limit)
        except ClientError as exc:
            raise _refused(exc, f"list {uri or 's3://'}") from exc

    @router.get(
        "/meta",
        response_model=ObjectMeta,
        summary="An object's size, time, content type and user metadata",
        responses={
            400: {"description": "not an s3:// URI"},
            404: {"description": "no object at that URI"},
            502: {"description": "S3 refused the request"},
        },
    )
    async def meta(uri: Annotated[str, Query(description="s3://bucket/key")]) -> ObjectMeta:
        bucket, key = _parse(uri)
        head = await _head(s3(), bucket, key, uri)
        return ObjectMeta(
            uri=uri,
            bytes=head["ContentLength"],
            modified=head["LastModified"].isoformat(timespec="seconds"),
            content_type=head.get("ContentType"),
            etag=head.get("ETag"),
            metadata=head.get("Metadata", {}),
        )

    @router.get(
        "/preview",
        response_model=Preview,
        summary="The first rows of a JSON, JSONL, CSV or Parquet object",
        description=f"JSONL and CSV (gzip'd or not) are read only as far as the rows shown; "
        f"JSON documents and Parquet objects up to {MAX_WHOLE_BYTES // 2**20} MiB. "
        "`truncated`: more rows follow.",
        responses={
            400: {"description": "not an s3:// URI"},
            404: {"description": "no object at that URI"},
            422: {"description": "not a format the preview reads, or too large"},
            502: {"description": "S3 refused the request"},
        },
    )
    async def preview(
        uri: Annotated[str, Query(description="s3://bucket/key")],
        rows: Annotated[int, Query(ge=1, le=PREVIEW_ROWS)] = PREVIEW_ROWS,
    ) -> Preview:
        bucket, key = _parse(uri)
        try:
            fmt, gz = object_format(key)
            head = await _head(s3(), bucket, key, uri)
            if fmt in WHOLE and head["ContentLength"] > MAX_WHOLE_BYTES:
                raise NotPreviewable(
                    f"{uri}: {head['ContentLength']} bytes, above the "
                    f"{MAX_WHOLE_BYTES // 2**20} MiB a {fmt} preview reads"
                )
            try:
                body = (await s3().get_object(Bucket=bucket, Key=key))["Body"]
                async with body:  # closes the connection, also when not read to the end
                    if fmt == "parquet":
                        return parquet_preview(await body.read(), rows)
                    if fmt == "json":
                        return json_preview(await body.read(), gz, rows)
                    lines, more = await text_lines(body.iter_chunks(CHUNK), gz, rows + 1)
            except ClientError as exc:
                raise _refused(exc, f"read {uri}") from exc
            except (zlib.error, EOFError, OSError) as exc:
                raise NotPreviewable(f"{uri}: not gzip data: {exc}") from exc
            if fmt == "csv":  # the header is one of the lines read
                return csv_preview(lines, more)
            return jsonl_preview(lines[:rows], more or len(lines) > rows)
        except NotPreviewable as exc:
            raise HTTPException(422, str(exc)) from exc

    return router


def _parse(uri: str) -> tuple[str, str]:
    try:
        return parse_s3_uri(uri)
    except ValueError as exc:
        raise HTTPException(400, f"uri: {exc}") from exc


async def _head(s3: "S3Client", bucket: str, key: str, uri: str) -> Any:
    """HEAD of an object; 404 when it is missing, 502 when S3 refuses."""
    try:
        return await s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in MISSING:
            raise HTTPException(404, f"no object at {uri}") from exc
        raise _refused(exc, f"describe {uri}") from exc


def _refused(exc: ClientError, what: str) -> HTTPException:
    error = exc.response.get("Error", {})
    return HTTPException(502, f"S3 refused to {what}: {error.get('Code')}: {error.get('Message')}")
