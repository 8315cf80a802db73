"""The ingest HTTP API: `POST /v1/events` and the schema registry (`GET /v1/schemas`)."""

import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest.admission import Admission, Overloaded
from services.ingest.domain import (
    NDJSON_TYPES,
    BadBody,
    BatchCheck,
    EventIn,
    split_items,
    to_envelope,
)
from services.ingest.registry import SchemaRegistry, UnknownSchema
from services.ingest.settings import IngestSettings
from shared.jetstream import EventPublisher
from shared.turns import taking_turns


class Accepted(BaseModel):
    accepted: int
    ids: list[str]


_ERRORS = {
    "description": "What is wrong; for 422 one entry per bad item: index, field, message",
}


def inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with each `#/$defs/...` reference replaced by its definition. Placed inside
    an OpenAPI document, `#/$defs/X` would point at the document's root, where nothing is;
    the model's definitions are not recursive, so they can be written in place."""
    defs = schema.get("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in seen:
                raise ValueError(f"recursive definition {name!r} cannot be inlined")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return resolve({**defs[name], **rest}, (*seen, name))
        return {k: resolve(v, seen) for k, v in node.items() if k != "$defs"}

    resolved: dict[str, Any] = resolve(schema)
    return resolved


REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_defs(EventIn.model_json_schema())},
            NDJSON_TYPES[0]: {
                "schema": {"type": "string", "description": "one event object per line"}
            },
        },
    }
}


def events_router(
    settings: IngestSettings,
    publisher: EventPublisher,
    registry: SchemaRegistry,
    admission: Admission,
) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["events"])
    api_keys = _api_keys(settings)

    @router.post(
        "/events",
        status_code=202,
        response_model=Accepted,
        summary="Publish one event (JSON) or a batch (NDJSON)",
        description=(
            "Validates every event (its `data` against the schema of its `type`, see "
            "`GET /v1/schemas`), then publishes each to `data.<type>` and answers 202 only "
            "after JetStream stored all of them. A batch is all or nothing: if any item is "
            "invalid, nothing is published and the 422 lists every problem of every item. "
            "Send your own `id`s to make re-sends idempotent. When ingest has as much work "
            "in flight as it can answer in time, it refuses the request with 429 and a "
            "`Retry-After` (seconds) before publishing anything of it: send the same body "
            "again after that delay."
        ),
        responses={
            400: _ERRORS,
            401: _ERRORS,
            413: _ERRORS,
            415: _ERRORS,
            422: _ERRORS,
            429: {
                "description": "At capacity: nothing was published; retry after the "
                "`Retry-After` header's seconds (also `retry_after_s` in the body)"
            },
            503: {"description": "JetStream did not acknowledge; retry with the same ids"},
        },
        openapi_extra=REQUEST_BODY,
    )
    async def post_events(request: Request) -> JSONResponse:
        if not _authorised(request.headers, api_keys):
            return _problem(401, "missing or invalid API key (header X-API-Key)")
        declared = int(request.headers.get("content-length") or 0)
        if declared > settings.ingest_max_body_bytes:
            return _problem(413, _too_large(declared, settings.ingest_max_body_bytes))
        body = await request.body()
        # AdmissionGate refused it at its arrival if ingest was full then; it may have
        # filled up while this body was read: refused before the body is parsed.
        if admission.full():
            return _overloaded(admission.refuse("http"))
        if len(body) > settings.ingest_max_body_bytes:
            return _problem(413, _too_large(len(body), settings.ingest_max_body_bytes))
        try:
            items = split_items(
                request.headers.get("content-type", ""), body, settings.ingest_max_batch
            )
        except BadBody as exc:
            return _problem(exc.status, exc.message)
        try:
            with admission.admit(len(items), "http") as stored:
                return await _validate_and_publish(items, registry, publisher, stored)
        except Overloaded as exc:
            return _overloaded(exc)

    return router


async def _validate_and_publish(
    items: list[Any],
    registry: SchemaRegistry,
    publisher: EventPublisher,
    stored: Callable[[], None],
) -> JSONResponse:
    """422 if any item is invalid; else publish every event, 202 once all are stored. The
    work is done on the event loop in turns (`shared.turns`), a big batch included."""
    check = BatchCheck(registry)
    async for index, item in taking_turns(enumerate(items)):
        check.add(index, item)
    events, errors = check.events, check.errors
    if errors:
        return JSONResponse(
            {
                "detail": [e.as_dict() for e in errors],
                "published": 0,
                "message": f"{len({e.index for e in errors})} of {len(items)} items invalid;"
                " nothing was published",
            },
            status_code=422,
        )
    now = datetime.now(UTC)
    envelopes = [to_envelope(e, now) async for e in taking_turns(events)]
    try:
        await publisher.publish_many(envelopes)
    except Exception as exc:
        return _problem(503, f"JetStream did not acknowledge every event: {exc!r}")
    stored()
    return JSONResponse(
        Accepted(accepted=len(envelopes), ids=[e.id for _, e in envelopes]).model_dump(),
        status_code=202,
    )


class AdmissionGate:
    """Refuses `POST /v1/events` at its arrival while ingest is full (`Admission.full`):
    429 with `Retry-After`, before its body is read, routed or parsed.

    A pure ASGI middleware in front of the routing: under 10x overload most requests are
    refused, and each refusal must cost the event loop as little as possible. A request
    the endpoint would refuse anyway (no valid API key, a declared body past the limit)
    goes on to get its 401 or 413. uvicorn discards the body of a request answered before
    it was read and keeps the connection for the next request."""

    PATH = "/v1/events"

    def __init__(self, app: ASGIApp, admission: Admission, settings: IngestSettings) -> None:
        self.app = app
        self.admission = admission
        self.api_keys = _api_keys(settings)
        self.max_body_bytes = settings.ingest_max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == self.PATH
            and self.admission.full()
            and self._acceptable(Headers(scope=scope))
        ):
            await _overloaded(self.admission.refuse("http"))(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _acceptable(self, headers: Headers) -> bool:
        declared = headers.get("content-length", "0")
        return (
            _authorised(headers, self.api_keys)
            and declared.isdigit()
            and int(declared) <= self.max_body_bytes
        )


def schemas_router(registry: SchemaRegistry) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["schemas"])

    @router.get("/schemas", summary="The event types, with their schema versions")
    async def list_schemas() -> dict[str, Any]:
        return {"schemas": registry.describe()}

    @router.get(
        "/schemas/{event_type}",
        summary="The JSON Schema of an event type (its current version unless one is asked)",
        responses={404: _ERRORS},
    )
    async def get_schema(
        event_type: str, version: Annotated[int | None, Query(ge=1)] = None
    ) -> JSONResponse:
        try:
            return JSONResponse(registry.schema(event_type, version))
        except UnknownSchema as exc:
            return _problem(404, exc.message)

    return router


def _api_keys(settings: IngestSettings) -> list[bytes]:
    return [key.get_secret_value().encode() for key in settings.ingest_api_keys]


def _authorised(headers: Headers, keys: list[bytes]) -> bool:
    """True when no key is needed or `X-API-Key` holds one of `keys`."""
    if not keys:
        return True
    given = headers.get("x-api-key", "").encode()
    return any(hmac.compare_digest(given, key) for key in keys)


def _too_large(size: int, limit: int) -> str:
    return f"body is {size} bytes; the limit is {limit} (CHOREO_INGEST_MAX_BODY_BYTES)"


def _overloaded(refusal: Overloaded) -> JSONResponse:
    return JSONResponse(
        {"detail": str(refusal), "published": 0, "retry_after_s": refusal.retry_after_s},
        status_code=429,
        headers={"Retry-After": str(refusal.retry_after_s)},
    )


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)
