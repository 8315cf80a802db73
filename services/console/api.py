"""The console's data endpoints (`/api/...`, JSON) and actions. Everything is read through
the services' HTTP APIs and JetStream; the actions publish the same run commands the CLI
does. Nothing here writes the database or the lake."""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, StreamingResponse
from nats.js import JetStreamContext
from pydantic import BaseModel, Field, JsonValue

from services.console.live import Hub, sse
from services.console.settings import SERVICE_URLS
from services.console.upstream import Upstream
from shared.jetstream import EventPublisher
from shared.subjects import DLQ
from shared.workflow import events as ev
from shared.workflow.deployments import Deployed

SOURCE = "choreo/console"
PAGE = 50
NEXT_CURSOR = "choreo-next-cursor"
RETRYABLE = ("failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
HEALTH_TIMEOUT_S = 2.0


class RunForm(BaseModel):
    inputs: dict[str, JsonValue] = Field(default_factory=dict)


def _dag(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    """A workflow's steps as the DAG drawing needs them."""
    keys = ("id", "uses", "needs", "with")
    return [{k: s.get(k) for k in keys} for s in workflow.get("steps") or [] if isinstance(s, dict)]


@dataclass(frozen=True)
class DeployedWorkflow:
    """A deployed workflow as the Workflows page shows it."""

    versions: list[Deployed]  # every stored version, oldest first (at least the latest)
    triggers_paused: bool


def _trigger(trigger: dict[str, Any]) -> dict[str, Any]:
    """An entry of `on`: an object trigger's glob, or an event trigger's type and `where`."""
    if "object" in trigger:
        return {"object": trigger["object"]}
    return {"event": trigger.get("event"), "where": trigger.get("where") or {}}


def workflow_listing(deployed: DeployedWorkflow) -> dict[str, Any]:
    """The latest version's description, inputs, DAG and triggers, and every version."""
    latest = deployed.versions[-1]
    spec = latest.workflow
    return {
        "name": latest.name,
        "version": latest.version,
        "deployed_at": latest.deployed_at,
        "description": spec.get("description"),
        "inputs": spec.get("inputs") or {},
        "dag": _dag(spec),
        "versions": [
            {
                "version": d.version,
                "deployed_at": d.deployed_at,
                "digest": d.digest,
                "steps": len(d.workflow.get("steps") or []),
            }
            for d in reversed(deployed.versions)
        ],
        "triggers": [_trigger(t) for t in spec.get("on") or [] if isinstance(t, dict)],
        "max_concurrent": spec.get("max_concurrent"),
        "triggers_paused": deployed.triggers_paused,
    }


def api_router(
    upstream: Callable[[], Upstream],
    js: Callable[[], JetStreamContext],
    publisher: EventPublisher,
    hub: Hub,
    deployments: Callable[[], Awaitable[list[DeployedWorkflow]]],
) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["console"])

    @router.get("/runs", summary="A page of runs, newest first, filtered")
    async def runs(
        workflow: str | None = None,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        runid: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = PAGE,
    ) -> dict[str, Any]:
        params = {
            "workflow": workflow,
            "status": status,
            "since": since,
            "until": until,
            "runid": runid,
            "after": after,
            "limit": limit,
        }
        answer = await upstream().response("audit", "/v1/audit/runs", params)
        return {"runs": answer.json(), "next": answer.headers.get(NEXT_CURSOR)}

    @router.get("/runs/{runid}", summary="A run, its steps, its workflow's DAG and its events")
    async def run(runid: str) -> dict[str, Any]:
        found, events = await asyncio.gather(
            upstream().get("audit", f"/v1/audit/runs/{runid}"),
            upstream().find("audit", f"/v1/audit/runs/{runid}/events"),
        )
        requested = next((e for e in events or [] if e["type"] == ev.RUN_REQUESTED), None)
        data = requested["data"] if requested and isinstance(requested["data"], dict) else {}
        workflow = data.get("workflow")
        dag = _dag(workflow) if isinstance(workflow, dict) else []
        return {"run": found, "dag": dag, "events": events or []}

    @router.post("/runs/{runid}/cancel", status_code=202, summary="Cancel a run")
    async def cancel(runid: str) -> dict[str, Any]:
        current = await upstream().get("audit", f"/v1/audit/runs/{runid}")
        if current["status"] in FINISHED:
            raise HTTPException(409, f"run {runid} is {current['status']}: nothing to cancel")
        command = ev.run_command(ev.RUN_CANCEL_REQUESTED, runid, source=SOURCE, reason="console")
        await publisher.publish(command.type, command)
        return {"runid": runid, "requested": "cancel"}

    @router.post("/runs/{runid}/retry", status_code=202, summary="Retry a failed run")
    async def retry(runid: str) -> dict[str, Any]:
        current = await upstream().get("audit", f"/v1/audit/runs/{runid}")
        if current["status"] not in RETRYABLE:
            raise HTTPException(
                409, f"run {runid} is {current['status']}: only failed or cancelled runs retry"
            )
        command = ev.run_command(ev.RUN_RETRY_REQUESTED, runid, source=SOURCE)
        await publisher.publish(command.type, command)
        return {"runid": runid, "requested": "retry"}

    @router.get("/live", summary="Server-sent events: workflow state changes as they happen")
    async def live(request: Request, run: str | None = None) -> StreamingResponse:
        return StreamingResponse(
            sse(hub, run, request.is_disconnected),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    @router.get("/events/{event_id}", summary="An event: audit row, lake object, fraud score")
    async def event(event_id: str) -> dict[str, Any]:
        found, chain = await asyncio.gather(
            upstream().get("audit", f"/v1/audit/events/{event_id}"),
            upstream().get("audit", f"/v1/audit/events/{event_id}/chain"),
        )
        return {**found, "chain": chain}

    @router.get("/lake", summary="Buckets, or the folders and objects under a prefix")
    async def lake(uri: str | None = None) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = await upstream().get("store", "/v1/objects", {"uri": uri})
        return listed

    @router.get("/lake/object", summary="An object's metadata and its first rows")
    async def lake_object(uri: str) -> dict[str, Any]:
        meta = await upstream().get("store", "/v1/objects/meta", {"uri": uri})
        try:
            preview = await upstream().get("store", "/v1/objects/preview", {"uri": uri})
        except HTTPException as exc:
            if exc.status_code != 422:
                raise
            preview = {"unavailable": exc.detail}
        return {"meta": meta, "preview": preview}

    @router.get("/lake/download", summary="Redirect to a presigned download URL (5 minutes)")
    async def download(uri: str) -> RedirectResponse:
        signed = await upstream().get("store", "/v1/objects/presign", {"uri": uri, "expires": 300})
        return RedirectResponse(signed["url"], status_code=307)

    @router.get("/fraud", summary="Recent alerts, score distribution, decisions, rule counts")
    async def fraud(since: str = "1h") -> dict[str, Any]:
        alerts, summary = await asyncio.gather(
            upstream().get("audit", "/v1/audit/fraud/alerts", {"since": since, "limit": 100}),
            upstream().get("audit", "/v1/audit/fraud/summary", {"since": since}),
        )
        return {"alerts": alerts, "summary": summary}

    @router.get("/workflows", summary="Deployed workflows, their versions and triggers; schedules")
    async def workflows() -> dict[str, Any]:
        deployed, schedules = await asyncio.gather(
            deployments(), upstream().get("ingest", "/v1/schedules")
        )
        return {"workflows": [workflow_listing(d) for d in deployed], "schedules": schedules}

    @router.post("/workflows/{name}/run", status_code=202, summary="Run a deployed workflow")
    async def run_workflow(name: str, body: RunForm) -> dict[str, Any]:
        started: dict[str, Any] = await upstream().post(
            "ingest", "/v1/runs", {"workflow": name, "inputs": body.inputs}
        )
        return started

    @router.post("/schedules/{name}/{action}", summary="Pause or resume a schedule")
    async def schedule(name: str, action: Literal["pause", "resume"]) -> dict[str, Any]:
        changed: dict[str, Any] = await upstream().post("ingest", f"/v1/schedules/{name}/{action}")
        return changed

    @router.get("/dlq", summary="Dead letters, oldest first")
    async def dead_letters(service: str | None = None, since: str | None = None) -> Any:
        return await upstream().get(
            "ingest", "/v1/dlq", {"service": service, "since": since, "limit": 500}
        )

    @router.delete("/dlq", summary="Delete the dead letters older than a duration (7d)")
    async def purge(older_than: str) -> Any:
        return await upstream().delete("ingest", "/v1/dlq", older_than=older_than)

    @router.get("/dlq/{seq}", summary="One dead letter, with its payload")
    async def dead_letter(seq: str) -> Any:
        return await upstream().get("ingest", f"/v1/dlq/{seq}")

    @router.post("/dlq/{seq}/replay", summary="Replay a dead letter to its original subject")
    async def replay(seq: str, force: bool = False) -> Any:
        return await upstream().post("ingest", f"/v1/dlq/{seq}/replay", force=force or None)

    @router.get("/system", summary="Each part's health, streams, consumer lag, DLQ depth")
    async def system() -> dict[str, Any]:
        parts, jetstream = await asyncio.gather(_health(upstream()), _jetstream(js()))
        return {"parts": parts, **jetstream, "live_pages": hub.listeners}

    return router


async def _health(upstream: Upstream) -> list[dict[str, Any]]:
    async def one(name: str) -> dict[str, Any]:
        url = upstream.settings.service_url(name)
        if url is None:
            return {"name": name, "status": "unknown", "detail": "no URL configured"}
        try:
            answer = await upstream.client.get(f"{url}/readyz", timeout=HEALTH_TIMEOUT_S)
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            return {"name": name, "status": "down", "detail": type(exc).__name__}
        status = "ready" if answer.status_code == 200 else "not ready"
        return {"name": name, "status": status, "checks": body.get("checks", {})}

    return list(await asyncio.gather(*(one(n) for n in SERVICE_URLS)))


async def _jetstream(js: JetStreamContext) -> dict[str, Any]:
    streams, consumers = [], []
    for info in await js.streams_info():
        name = info.config.name or ""
        streams.append(
            {
                "name": name,
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "consumers": info.state.consumer_count,
            }
        )
        for consumer in await js.consumers_info(name):
            consumers.append(
                {
                    "stream": name,
                    "name": consumer.name,
                    "pending": consumer.num_pending or 0,
                    "ack_pending": consumer.num_ack_pending or 0,
                    "redelivered": consumer.num_redelivered or 0,
                }
            )
    dlq = next((s["messages"] for s in streams if s["name"] == DLQ.name), 0)
    streams.sort(key=lambda s: str(s["name"]))
    return {"streams": streams, "consumers": consumers, "dlq_depth": dlq}
