"""Fraud model versions in the object store, and which one the fraud service runs.

`s3://<curated>/models/fraud/<version>.json` holds a model file as `choreo fraud train`
writes it (services/fraud/model.json's format); `models/fraud/current.json` says which
version scores (`active`; none: the model shipped with the code) and which one runs in
shadow beside it (`shadow`: scored and recorded as `fraud.shadow`, never alerting). The
fraud service reads `current.json` every few seconds and switches without a restart; the
CLI (`choreo fraud models`, `promote`, `shadow`) writes it.

Only bytes and small JSON documents cross this module: checking a model is the scorer's
business (services/fraud/domain.py `Model.from_dict`).
"""

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

PREFIX = "models/fraud/"
CURRENT = PREFIX + "current.json"
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}


def model_key(version: str) -> str:
    if not version or "/" in version or version.startswith("."):
        raise ValueError(f"model version {version!r}: not a valid name")
    return f"{PREFIX}{version}.json"


@dataclass(frozen=True)
class Current:
    """What the fraud service runs: the active model (None: the shipped one) and a shadow."""

    active: str | None = None
    shadow: str | None = None
    changed_at: str | None = None  # RFC 3339, when it was written

    @classmethod
    def parse(cls, raw: bytes) -> "Current":
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError(f"{CURRENT}: not a JSON object")
        values = {k: doc.get(k) for k in ("active", "shadow", "changed_at")}
        bad = [k for k, v in values.items() if v is not None and not isinstance(v, str)]
        if bad:
            raise ValueError(f"{CURRENT}: {', '.join(bad)}: need a string or null")
        return cls(**values)


class ModelStore:
    """Model versions and the current choice, in one bucket."""

    def __init__(self, s3: "S3Client", bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    async def publish(self, version: str, document: dict[str, Any]) -> str:
        """Store a model file under its version (the same version is the same content, so
        publishing it again is harmless); its s3:// URI."""
        key = model_key(version)
        body = json.dumps(document, indent=2).encode()
        await self._s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        return f"s3://{self.bucket}/{key}"

    async def read(self, version: str) -> dict[str, Any]:
        """A stored model file; LookupError if there is no such version."""
        raw = await self._get(model_key(version))
        if raw is None:
            raise LookupError(f"no model version {version!r} in s3://{self.bucket}/{PREFIX}")
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError(f"model {version}: not a JSON object")
        return doc

    async def versions(self) -> list[dict[str, Any]]:
        """The stored versions, oldest first: version, size, stored_at."""
        found = []
        paginator = self._s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=PREFIX):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key == CURRENT or not key.endswith(".json"):
                    continue
                found.append(
                    {
                        "version": key[len(PREFIX) : -len(".json")],
                        "bytes": item["Size"],
                        "stored_at": item["LastModified"].astimezone(UTC).isoformat(),
                    }
                )
        return sorted(found, key=lambda v: (v["stored_at"], v["version"]))

    async def current(self) -> tuple[Current, str | None]:
        """The current choice and its ETag (None and the default when never written)."""
        found = await self._get_tagged(CURRENT)
        if found is None:
            return Current(), None
        return Current.parse(found[0]), found[1]

    async def choose(self, active: str | None, shadow: str | None) -> Current:
        """Write the current choice (each named version must exist)."""
        for version in (active, shadow):
            if version is not None:
                await self.read(version)
        chosen = Current(active, shadow, datetime.now(UTC).isoformat())
        body = json.dumps(asdict(chosen)).encode()
        await self._s3.put_object(Bucket=self.bucket, Key=CURRENT, Body=body)
        return chosen

    async def _get(self, key: str) -> bytes | None:
        found = await self._get_tagged(key)
        return None if found is None else found[0]

    async def _get_tagged(self, key: str) -> tuple[bytes, str | None] | None:
        """An object's bytes and ETag; None when there is no such object."""
        try:
            response = await self._s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return None
            raise
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data, response.get("ETag")
