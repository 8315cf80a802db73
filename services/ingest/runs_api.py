"""The run API over HTTP, for CI and other systems that should not hold NATS credentials:
start a run (of a deployed workflow or of a spec in the body), read it, cancel it, retry
it; list the deployed workflows and the schedules. The same API keys as `POST /v1/events`
(`CHOREO_INGEST_API_KEYS`, header `X-API-Key`) guard every route.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from services.ingest.api import _authorised
from services.ingest.schedules import ScheduleFires
from services.ingest.settings import IngestSettings
from shared.ids import uuid7
from shared.workflow import events as ev
from shared.workflow.deployments import DeploymentError
from shared.workflow.kinds import StepKind
from shared.workflow.runtime import Choreography
from shared.workflow.schedules import NAME_PATTERN, Schedules, ScheduleSpec
from shared.workflow.state import RunRecord
from shared.workflow.validate import validate_workflow

# A run id or schedule name as a path parameter: what a KV key token may hold.
RunId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_=-]{1,200}$")]
ScheduleName = Annotated[str, Path(pattern=NAME_PATTERN)]
# How long POST /v1/runs waits for the run to be started, so a GET right after finds it.
START_WAIT_S = 5.0
T = TypeVar("T")


class RunIn(BaseModel):
    """What to run: a deployed workflow by name, or a whole workflow spec."""

    model_config = ConfigDict(extra="forbid")

    workflow: str | None = Field(
        default=None, description="a deployed workflow: NAME (the latest) or NAME@VERSION"
    )
    spec: dict[str, JsonValue] | None = Field(
        default=None, description="a workflow document, as a workflow file holds it"
    )
    inputs: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> "RunIn":
        if (self.workflow is None) == (self.spec is None):
            raise ValueError("give exactly one of `workflow` (a deployed name) and `spec`")
        return self


class RunOut(BaseModel):
    runid: str
    name: str
    status: str = Field(
        description="queued (waiting for one of its workflow's max_concurrent slots), running, "
        "completed, failed or cancelled"
    )
    generation: int = 1
    reason: str | None = None
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    steps: dict[str, str] = Field(
        default_factory=dict, description="each step: done, or pending (not done yet)"
    )
    outputs: dict[str, JsonValue] = Field(default_factory=dict)


class Started(BaseModel):
    runid: str
    status: str = Field(
        description="requested, queued (waiting for one of its workflow's max_concurrent "
        "slots), running, completed, failed or cancelled"
    )


class WorkflowOut(BaseModel):
    name: str
    version: int
    deployed_at: datetime
    steps: int
    description: str | None = None


class ScheduleIn(ScheduleSpec):
    replace: bool = Field(default=False, description="replace a schedule of the same name")


class ScheduleOut(BaseModel):
    name: str
    workflow: str
    cron: str | None
    every: str | None
    timezone: str
    overlap: str
    state: str
    next_fire: datetime | None
    last_fire: datetime | None
    last_run: str | None
    skipped: int


def api_key_guard(settings: IngestSettings) -> Any:
    """A route dependency: 401 unless `X-API-Key` holds one of CHOREO_INGEST_API_KEYS (when
    any are set), as for `POST /v1/events`."""
    api_keys = [key.get_secret_value().encode() for key in settings.ingest_api_keys]

    async def require_key(request: Request) -> None:
        if api_keys and not _authorised(request.headers, api_keys):
            raise HTTPException(401, "missing or invalid API key (header X-API-Key)")

    return Depends(require_key)


def runs_router(
    settings: IngestSettings,
    choreography: Choreography,
    fires: ScheduleFires,
    js: Callable[[], JetStreamContext],
    kinds: Mapping[str, StepKind],
) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["runs"], dependencies=[api_key_guard(settings)])
    missing_key: dict[int | str, dict[str, Any]] = {
        401: {"description": "API keys are configured and X-API-Key holds none"}
    }
    not_json: dict[int | str, dict[str, Any]] = {400: {"description": "the body is not JSON"}}

    @router.post(
        "/runs",
        status_code=202,
        response_model=Started,
        summary="Start a run of a deployed workflow or of a workflow spec",
        description="Validates the workflow and the inputs first (422 lists every problem), "
        "then requests the run and answers once it started (or after 5 s, still `requested`: "
        "e.g. queued until one of the workflow's `max_concurrent` runs ends).",
        responses={
            **missing_key,
            **not_json,
            404: {"description": "no deployed workflow"},
            422: {},
        },
    )
    async def start(body: RunIn) -> Started:
        version = None
        if body.workflow is not None:
            try:
                deployed = await fires.deployments.get().resolve(body.workflow)
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from exc
            except DeploymentError as exc:
                raise HTTPException(404, str(exc)) from exc
            document, version = deployed.workflow, deployed.version
        else:
            document = dict(body.spec or {})
        checked = validate_workflow(document, body.inputs, kinds)
        if not checked.ok:
            problems = [{"path": p.path, "message": p.message} for p in checked.problems]
            raise HTTPException(422, problems)
        runid = uuid7()
        request = ev.run_requested(
            document, checked.inputs, runid, source=choreography.source, version=version
        )
        await choreography.publisher.publish(request.type, request)
        status = await _wait(lambda: _status(choreography, runid))
        return Started(runid=runid, status=status or "requested")

    @router.get(
        "/runs/{runid}",
        response_model=RunOut,
        summary="A run: its status, each step done or pending, the outputs so far",
        responses={**missing_key, 404: {"description": "no such run (or not requested yet)"}},
    )
    async def get_run(runid: RunId) -> RunOut:
        if await choreography.store.run(runid) is None:
            name = await choreography.store.queued(runid)
            if name is not None:
                return RunOut(runid=runid, name=name, status="queued")
        record = await _record(choreography, runid)
        steps = [s["id"] for s in record.workflow.get("steps", [])]
        outputs = await choreography.store.outputs(runid, steps)
        return RunOut(
            runid=runid,
            name=str(record.workflow.get("name", "?")),
            status=record.status,
            generation=record.generation,
            reason=record.reason,
            inputs=record.inputs,
            steps={s: "done" if s in outputs else "pending" for s in steps},
            outputs=outputs,
        )

    async def command(runid: str, event_type: str, allowed: tuple[str, ...]) -> Started:
        record = await _record(choreography, runid)
        if record.status not in allowed:
            raise HTTPException(
                409, f"run {runid} is {record.status}; needs {' or '.join(allowed)}"
            )
        event = ev.run_command(event_type, runid, source=choreography.source)
        await choreography.publisher.publish(event.type, event)
        changed = await _wait(lambda: _status_left(choreography, runid, record))
        return Started(runid=runid, status=changed.status if changed else record.status)

    @router.post(
        "/runs/{runid}/cancel",
        status_code=202,
        response_model=Started,
        summary="Cancel a running run: running steps finish, nothing new starts",
        responses={**missing_key, 404: {}, 409: {"description": "the run is not running"}},
    )
    async def cancel(runid: RunId) -> Started:
        return await command(runid, ev.RUN_CANCEL_REQUESTED, ("running",))

    @router.post(
        "/runs/{runid}/retry",
        status_code=202,
        response_model=Started,
        summary="Retry a failed or cancelled run: its failed and skipped steps run again",
        responses={**missing_key, 404: {}, 409: {"description": "not failed or cancelled"}},
    )
    async def retry(runid: RunId) -> Started:
        return await command(runid, ev.RUN_RETRY_REQUESTED, ("failed", "cancelled"))

    @router.get(
        "/workflows",
        response_model=list[WorkflowOut],
        summary="The deployed workflows, each at its latest version",
        responses=missing_key,
    )
    async def workflows() -> list[WorkflowOut]:
        return [
            WorkflowOut(
                name=d.name,
                version=d.version,
                deployed_at=datetime.fromtimestamp(d.deployed_at, UTC),
                steps=len(d.workflow.get("steps") or []),
                description=d.workflow.get("description"),
            )
            for d in await fires.deployments.get().latest_all()
        ]

    @router.get(
        "/schedules",
        response_model=list[ScheduleOut],
        summary="The schedules: what each runs, when, its state, next and last fire",
        responses=missing_key,
    )
    async def schedules() -> list[ScheduleOut]:
        store = Schedules(js(), fires.state.get())
        return [
            ScheduleOut(
                **item.spec.model_dump(include={"name", "workflow", "cron", "every"}),
                timezone=item.spec.timezone,
                overlap=item.spec.overlap,
                state="paused" if item.spec.paused else "active",
                next_fire=item.next_fire,
                last_fire=item.last_fire,
                last_run=item.last_run,
                skipped=item.skipped,
            )
            for item in await store.listed(datetime.now(UTC))
        ]

    @router.post(
        "/schedules",
        status_code=201,
        response_model=ScheduleSpec,
        summary="Create (or with `replace`, replace) a schedule of a deployed workflow",
        description="`cron` (6 fields, seconds first, with `timezone`) or `every` (30s, 5m); "
        "inputs may read `{{ schedule.time }}` and `{{ schedule.date }}`. 422 when the "
        "workflow is not deployed or would refuse the inputs; 409 when the name is taken.",
        responses={**missing_key, **not_json, 409: {}, 422: {}},
    )
    async def create_schedule(body: ScheduleIn) -> ScheduleSpec:
        spec = ScheduleSpec.model_validate(body.model_dump(exclude={"replace"}))
        store = Schedules(js(), fires.state.get())
        if not body.replace and await store.get(spec.name) is not None:
            raise HTTPException(409, f"a schedule named {spec.name!r} exists")
        stored = await store.create(spec, fires.deployments.get(), replace=True, kinds=kinds)
        if isinstance(stored, str):
            raise HTTPException(422, stored)
        return stored

    async def change(name: str, paused: bool) -> ScheduleSpec:
        spec = await Schedules(js(), fires.state.get()).set_paused(name, paused)
        if spec is None:
            raise HTTPException(404, f"no schedule named {name!r}")
        return spec

    @router.post(
        "/schedules/{name}/pause",
        response_model=ScheduleSpec,
        summary="Stop firing a schedule",
        responses={**missing_key, 404: {}},
    )
    async def pause_schedule(name: ScheduleName) -> ScheduleSpec:
        return await change(name, True)

    @router.post(
        "/schedules/{name}/resume",
        response_model=ScheduleSpec,
        summary="Fire a paused schedule again, from its next fire time",
        responses={**missing_key, 404: {}},
    )
    async def resume_schedule(name: ScheduleName) -> ScheduleSpec:
        return await change(name, False)

    @router.delete(
        "/schedules/{name}",
        status_code=204,
        summary="Delete a schedule (its runs stay)",
        responses={**missing_key, 404: {}},
    )
    async def delete_schedule(name: ScheduleName) -> None:
        if not await Schedules(js(), fires.state.get()).delete(name):
            raise HTTPException(404, f"no schedule named {name!r}")

    return router


async def _record(choreography: Choreography, runid: str) -> RunRecord:
    record = await choreography.store.run(runid)
    if record is None:
        raise HTTPException(404, f"no run {runid!r} (a run just requested appears once started)")
    return record


async def _status_left(
    choreography: Choreography, runid: str, before: RunRecord
) -> RunRecord | None:
    """The run once its status or generation changed from `before`."""
    now = await choreography.store.run(runid)
    changed = now is not None and (now.status, now.generation) != (
        before.status,
        before.generation,
    )
    return now if changed else None


async def _status(choreography: Choreography, runid: str) -> str | None:
    """The run's status once it started, `queued` while it waits for a slot, else None."""
    record = await choreography.store.run(runid)
    if record is not None:
        return record.status
    return "queued" if await choreography.store.queued(runid) is not None else None


async def _wait(probe: Callable[[], Awaitable[T | None]]) -> T | None:
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        found = await probe()
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    return None
