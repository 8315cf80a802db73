"""The medallion buckets and their idempotent creation."""

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

# Codes an S3 server answers when the bucket exists already (ours or, on AWS, anyone's).
EXISTS = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}


async def ensure_buckets(s3: "S3Client", buckets: list[str]) -> list[str]:
    """Create the buckets that do not exist; return the ones created."""
    created = []
    for bucket in buckets:
        try:
            await s3.create_bucket(Bucket=bucket)
            created.append(bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in EXISTS:
                raise
    return created
