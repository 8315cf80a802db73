"""Dead letters over HTTP, beside the run API and with its API keys: list, read and
replay what services gave up on (`shared/dlq.py`; `choreo dlq` does the same, and purges).

Ingest publishes a replay with its own NATS user, so it replays what ingest may publish
(`data.*`, `data.in.>`, `wf.>`); a dead letter from another subject (e.g. `fraud.>`) is
refused with 403 and replayed with `choreo dlq replay`, whose admin user may publish it.
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import Counter
from pydantic import BaseModel, Field

from shared.dlq import DeadLetter, DeadLetters, open_state
from shared.durations import FORMS, duration_seconds
from shared.metrics import Metrics
from shared.settings import Settings
from shared.slot import Slot
from shared.subjects import SERVICE_PERMISSIONS, SERVICES, subject_matches

# A DLQ stream sequence number (JetStream's are unsigned 64-bit; ids here are positive).
Seq = Annotated[int, Path(ge=1, le=2**63 - 1)]


class DeadLetterOut(BaseModel):
    id: int
    service: str
    time: datetime
    subject: str
    reason: str
    deliveries: int | None
    replayed_at: datetime | None


class DeadLetterDetail(DeadLetterOut):
    stream: str
    stream_seq: int
    headers: dict[str, str]
    payload: str
    payload_encoding: str = Field(description="utf-8, or base64 for a body that is not text")


class Replayed(BaseModel):
    id: int
    replayed: bool = Field(description="false: it was replayed before (pass force=true)")


class DeadLetterApi:
    """The routes, the DLQ state bucket they need, and the replay counter."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.state: Slot[KeyValue] = Slot("the dead-letter state bucket")
        self.replays = Counter(
            "choreo_dlq_replayed",
            "Dead letters replayed over HTTP, by the service that had given up on them.",
            ["service", "from_service"],
            registry=metrics.registry,
        )
        self.service = metrics.service
        for service in SERVICES:  # known labels start at 0
            self.replays.labels(self.service, service)

    async def open(self, js: JetStreamContext) -> None:
        self.state.set(await open_state(js, self.settings))

    def router(self, js: Callable[[], JetStreamContext], guard: Any) -> APIRouter:
        router = APIRouter(prefix="/v1/dlq", tags=["dead letters"], dependencies=[guard])
        may_publish = SERVICE_PERMISSIONS[self.service].publish

        def letters() -> DeadLetters:
            return DeadLetters(js(), self.state.get())

        @router.get("", response_model=list[DeadLetterOut], summary="Dead letters, oldest first")
        async def list_letters(
            service: Annotated[str | None, Query(description=", ".join(SERVICES))] = None,
            since: Annotated[str | None, Query(description=f"a duration back: {FORMS}")] = None,
            limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        ) -> list[dict[str, Any]]:
            if service is not None and service not in SERVICES:
                _invalid("service", service, f"one of {', '.join(SERVICES)}")
            start = None
            if since is not None:
                seconds = duration_seconds(since)
                if seconds is None or seconds > 10 * 365 * 86400:
                    _invalid("since", since, f"a duration such as {FORMS}, up to 10 years")
                start = datetime.now(UTC) - timedelta(seconds=seconds)
            return [x.summary() for x in await letters().list(service, start, limit)]

        async def one(seq: int) -> DeadLetter:
            letter = await letters().get(seq)
            if letter is None:
                raise HTTPException(404, f"no dead letter {seq}")
            return letter

        @router.get(
            "/{seq}",
            response_model=DeadLetterDetail,
            summary="One dead letter: reason, deliveries, original subject, headers, body",
            responses={404: {}},
        )
        async def show(seq: Seq) -> dict[str, Any]:
            return (await one(seq)).detail()

        @router.post(
            "/{seq}/replay",
            response_model=Replayed,
            summary="Publish a dead letter again to its original subject (fix its cause first)",
            responses={403: {"description": "ingest may not publish to its subject"}, 404: {}},
        )
        async def replay(seq: Seq, force: bool = False) -> Replayed:
            letter = await one(seq)
            if not any(subject_matches(p, letter.subject) for p in may_publish):
                raise HTTPException(
                    403,
                    f"ingest may not publish to {letter.subject}: replay it with "
                    f"`choreo dlq replay {seq}`",
                )
            replayed = await letters().replay(letter, force=force)
            if replayed:
                self.replays.labels(self.service, letter.service).inc()
            return Replayed(id=seq, replayed=replayed)

        return router


def _invalid(name: str, value: str, expected: str) -> NoReturn:
    """A 422 in the shape of every other 422 of the API (as the OpenAPI document says)."""
    problem = {"type": "value_error", "loc": ("query", name), "msg": f"{value!r}: {expected}"}
    raise RequestValidationError([{**problem, "input": value}])
