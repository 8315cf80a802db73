"""The web console: runs (live), a run's DAG, workflows and schedules, events, the lake,
fraud alerts, dead letters and the system's health, in the browser.

A part of its own rather than a module of audit: it reads several services (audit, store,
ingest) and JetStream, holds long-lived browser connections (server-sent events), and must
be able to stay up, or be left out, independently of the audit trail's writer. It writes
nothing itself: Cancel and Retry publish the same run commands the CLI publishes; Run,
schedules and dead letters go through ingest's API.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import Response
from fastapi.staticfiles import StaticFiles

from services.console.api import DeployedWorkflow, api_router
from services.console.auth import guard
from services.console.live import Hub, summary
from services.console.pages import pages_router
from services.console.settings import ConsoleSettings
from services.console.upstream import Upstream
from shared.envelope import Event
from shared.jetstream import EventPublisher, jetstream
from shared.metrics import Metrics
from shared.service import Service, build_service, create_broker
from shared.slot import Slot
from shared.workflow.deployments import Deployments, open_bucket
from shared.workflow.triggers import is_paused

NAME = "console"
STATIC = Path(__file__).parent / "static"


def create_app(settings: ConsoleSettings | None = None) -> Service:
    settings = settings or ConsoleSettings.load()
    metrics = Metrics(NAME)
    broker = create_broker(settings, NAME)
    hub = Hub()
    upstream: Slot[Upstream] = Slot("the upstream HTTP client")

    @broker.subscriber(
        "wf.>",
        title="console/live",
        description="Every workflow event, forwarded to the open pages (core NATS: nothing "
        "is stored or acknowledged).",
        # A JetStream publish is a request whose reply is the stream's ack: an answer from
        # here would reach the publisher first and fail its publish.
        no_reply=True,
    )
    async def on_workflow_event(body: dict[str, Any]) -> None:
        hub.publish(summary(Event.model_validate(body)))

    @asynccontextmanager
    async def http_client() -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.console_upstream_timeout_s)
        async with httpx.AsyncClient(timeout=timeout) as client:
            upstream.set(Upstream(settings, client))
            yield

    async def deployed() -> list[DeployedWorkflow]:
        store = Deployments(await open_bucket(jetstream(broker), settings))
        found = []
        for latest in await store.latest_all():
            # A version deployed since latest_all read the pointer is left for the next read.
            versions = [d for d in await store.versions(latest.name) if d.version <= latest.version]
            paused = await is_paused(store.kv, latest.name)
            found.append(DeployedWorkflow(versions or [latest], paused))
        return found

    service = build_service(
        NAME,
        settings,
        broker,
        metrics,
        resources=[http_client],
        routers=[
            api_router(
                upstream.get,
                lambda: jetstream(broker),
                EventPublisher(broker, metrics),
                hub,
                deployed,
            ),
            pages_router(settings),
        ],
        title="Choreo console",
        description="Runs, DAGs, events, the lake, fraud alerts and the system's health.",
    )
    service.http.middleware("http")(guard(settings))
    service.http.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @service.http.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    return service
