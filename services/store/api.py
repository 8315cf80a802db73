"""The store's HTTP API: presigned download URLs for objects in the lake."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from botocore.exceptions import ClientError
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from shared.s3 import parse_s3_uri

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

# The longest a SigV4 presigned URL may live (7 days).
MAX_EXPIRES_S = 7 * 24 * 3600
# What S3 servers answer for a missing key or bucket (HEAD answers a bare status code).
MISSING = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


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
        try:
            bucket, key = parse_s3_uri(uri)
        except ValueError as exc:
            raise HTTPException(400, f"uri: {exc}") from exc
        try:
            head = await s3().head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") in MISSING:
                raise HTTPException(404, f"no object at {uri}") from exc
            reason = f"{error.get('Code')}: {error.get('Message')}"
            raise HTTPException(502, f"S3 refused to describe {uri}: {reason}") from exc
        url = await signer().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
        )
        return Presigned(url=url, uri=uri, expires_in=expires, bytes=head["ContentLength"])

    return router
