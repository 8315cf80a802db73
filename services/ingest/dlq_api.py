"""Dead letters over HTTP, beside the run API and with its API keys: list, read, replay
and purge what services gave up on (`shared/dlq.py`; `choreo dlq` does the same).

Ingest publishes a replay with its own NATS user, which may publish every subject a service
consumes (`shared.subjects.CONSUMED_SUBJECTS`: where every dead letter comes from) and purge
the stream DLQ, and nothing more of that kind: a dead letter naming any other subject (only
a forged one can) is refused with 403, so a replay never reaches the JetStream API or a
bucket although ingest's user may use them.
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
from shared.subjects import CONSUMED_SUBJECTS, SERVICES, subject_matches

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


class Purged(BaseModel):
    purged: int = Field(description="how many dead letters were deleted")


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
        self.purged = Counter(
            "choreo_dlq_purged",
            "Dead letters deleted over HTTP (DELETE /v1/dlq?older_than=).",
            ["service"],
            registry=metrics.registry,
        )
        self.purged.labels(self.service)
        for service in SERVICES:  # known labels start at 0
            self.replays.labels(self.service, service)

    async def open(self, js: JetStreamContext) -> None:
        self.state.set(await open_state(js, self.settings))

    def router(self, js: Callable[[], JetStreamContext], guard: Any) -> APIRouter:
        router = APIRouter(prefix="/v1/dlq", tags=["dead letters"], dependencies=[guard])

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
            start = None if since is None else datetime.now(UTC) - _age("since", since)
            return [x.summary() for x in await letters().list(service, start, limit)]

        @router.delete(
            "",
            response_model=Purged,
            summary="Delete the dead letters older than a duration",
            description="What `choreo dlq purge --older-than` does: dead letters stay in the "
            "stream DLQ until purged.",
        )
        async def purge(
            older_than: Annotated[str, Query(description=f"a duration back: {FORMS}")],
        ) -> Purged:
            age = _age("older_than", older_than)
            purged = await letters().purge_older_than(age, datetime.now(UTC))
            self.purged.labels(self.service).inc(purged)
            return Purged(purged=purged)

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
            responses={403: {"description": "no service consumes its subject"}, 404: {}},
        )
        async def replay(seq: Seq, force: bool = False) -> Replayed:
            letter = await one(seq)
            if not any(subject_matches(p, letter.subject) for p in CONSUMED_SUBJECTS):
                raise HTTPException(
                    403,
                    f"no service consumes {letter.subject!r}: a dead letter comes from one of "
                    f"{', '.join(CONSUMED_SUBJECTS)}",
                )
            replayed = await letters().replay(letter, force=force)
            if replayed:
                self.replays.labels(self.service, letter.service).inc()
            return Replayed(id=seq, replayed=replayed)

        return router


def _age(name: str, value: str) -> timedelta:
    """A query parameter's duration (`1h`, `7d`), up to 10 years; a 422 naming it otherwise."""
    seconds = duration_seconds(value)
    if seconds is None or seconds > 10 * 365 * 86400:
        _invalid(name, value, f"a duration such as {FORMS}, up to 10 years")
    return timedelta(seconds=seconds)


def _invalid(name: str, value: str, expected: str) -> NoReturn:
    """A 422 in the shape of every other 422 of the API (as the OpenAPI document says)."""
    problem = {"type": "value_error", "loc": ("query", name), "msg": f"{value!r}: {expected}"}
    raise RequestValidationError([{**problem, "input": value}])
