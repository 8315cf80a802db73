"""`GET /v1/events/{id}`: an event and where it went.

The audit record (and, for a transaction, its fraud score) comes from the audit service
over NATS request-reply (services meet on subjects, not on each other's databases); the
lake object is found from the record's type, date and stream sequence, under the key
layout the lander uses (shared.lake).
"""

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from faststream.nats import NatsBroker
from nats.errors import NoRespondersError

from shared.lake import Group, key_segment, seq_range
from shared.s3 import s3_uri
from shared.settings import Settings
from shared.subjects import AUDIT_EVENT_LOOKUP, DATA

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

LOOKUP_TIMEOUT_S = 3.0
FRAUD_FIELDS = ("score", "decision", "reasons", "model", "scored_at")


def lookup_router(
    broker: NatsBroker, s3: Callable[[], "S3Client"], settings: Settings
) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["events"])

    @router.get(
        "/events/{event_id}",
        summary="An event and where it went",
        description="The event as audited, and the raw-lake object that holds it (null until "
        "the lander wrote it). `fraud`: for a `transaction`, its fraud score "
        "(`score`, `decision`, `reasons`, `model`, `scored_at`) once the fraud service scored "
        "it, null until then; always null for other types.",
        responses={404: {"description": "not (yet) in the audit trail"}, 503: {}},
    )
    async def get_event(event_id: str) -> JSONResponse:
        try:
            reply = await broker.request(
                {"id": event_id}, AUDIT_EVENT_LOOKUP, timeout=LOOKUP_TIMEOUT_S
            )
        except (TimeoutError, NoRespondersError):
            return JSONResponse(
                {"detail": "the audit service did not answer; try again"}, status_code=503
            )
        answer: dict[str, Any] = json.loads(reply.body)
        record = answer.get("event")
        if not answer.get("found") or not isinstance(record, dict):
            return JSONResponse(
                {"detail": f"no event {event_id!r} in the audit trail (yet)"}, status_code=404
            )
        lake = None
        if record.get("stream") == DATA.name:
            lake = await _lake_object(s3(), settings.bucket_raw, record)
        score = answer.get("fraud")
        return JSONResponse(
            {
                "event": {
                    k: record[k]
                    for k in (
                        "id",
                        "type",
                        "source",
                        "subject",
                        "time",
                        "correlationid",
                        "causationid",
                        "data",
                    )
                },
                "audit": {
                    k: record[k] for k in ("received_at", "nats_subject", "stream", "stream_seq")
                },
                "lake": lake,
                "fraud": {k: score[k] for k in FRAUD_FIELDS} if isinstance(score, dict) else None,
            }
        )

    return router


async def _lake_object(
    s3: "S3Client", bucket: str, record: dict[str, Any]
) -> dict[str, Any] | None:
    """The object of the raw lake whose sequence range holds the event, if written yet."""
    day = datetime.fromisoformat(str(record["time"])).astimezone(UTC).date().isoformat()
    prefix = Group(key_segment(str(record["type"])), day).prefix
    seq = int(record["stream_seq"])
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found = seq_range(item["Key"])
            if found and found[0] <= seq <= found[1]:
                return {
                    "uri": s3_uri(bucket, item["Key"]),
                    "first_seq": found[0],
                    "last_seq": found[1],
                }
    return None
