"""What every Choreo service is made of: a NATS broker, an HTTP app and readiness checks.

`build_service()` wires them: the FastAPI app's lifespan connects the broker, provisions the
streams, opens the service's own resources, starts the subscribers, and on shutdown drains
in-flight messages before closing resources. FastAPI (rather than FastStream's own ASGI
app, which routes exact paths only) serves the HTTP side so ingest gets path parameters and
an OpenAPI document.

`run()` serves one service with uvicorn; SIGTERM or Ctrl-C stop it gracefully in < 10 s.
"""

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import structlog
import uvicorn
from fastapi import APIRouter, FastAPI, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from faststream.nats import NatsBroker, NatsUserPassword
from nats.js import JetStreamContext

from shared.access import SERVICE_PERMISSIONS
from shared.compat import patch_faststream_fetch_timeout
from shared.envelope import Event
from shared.jetstream import ensure_streams, jetstream
from shared.logs import configure_logging
from shared.metrics import Metrics
from shared.pull import PullConsumer
from shared.settings import Settings
from shared.tracing import configure as configure_tracing
from shared.watchdog import LoopWatchdog, serve_health
from shared.workflow.runtime import Choreography

log = structlog.get_logger(__name__)

EventLoop = Literal["auto", "asyncio"]
"""uvicorn's event loop: "auto" is uvloop when installed, "asyncio" the standard one."""

ReadinessCheck = Callable[[], Awaitable[object]]
"""Raises (or times out) when a backing store is unreachable."""

CHECK_TIMEOUT_S = 2.0
# FastStream waits this long for in-flight handlers on stop; uvicorn's own grace period
# is a little longer, and both together stay under the 10 s a SIGTERM is allowed.
DRAIN_TIMEOUT_S = 6.0
HTTP_SHUTDOWN_TIMEOUT_S = 2


def create_broker(settings: Settings, service: str) -> NatsBroker:
    """A broker that connects as the service's own NATS user and reconnects forever.

    Every broker is made here, so this is where the FastStream workaround is applied."""
    patch_faststream_fetch_timeout()
    security = None
    if settings.nats_user and settings.nats_password:
        security = NatsUserPassword(settings.nats_user, settings.nats_password.get_secret_value())
    return NatsBroker(
        settings.nats_servers,
        name=f"choreo-{service}",
        security=security,
        max_reconnect_attempts=-1,
        graceful_timeout=DRAIN_TIMEOUT_S,
        # A plain stdlib logger: its records go through the root handler configured in
        # shared.logs; per-message "Received/Processed" lines are DEBUG, not INFO.
        logger=logging.getLogger(f"faststream.{service}"),
        log_level=logging.DEBUG,
        description=f"Choreo {service} service",
    )


@dataclass
class Service:
    """One runnable service: `http` is the ASGI app, `broker` its NATS side."""

    name: str
    settings: Settings
    broker: NatsBroker
    metrics: Metrics
    http: FastAPI
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    watchdog: LoopWatchdog | None = None
    http_loop: EventLoop = "auto"
    consumers: Sequence[PullConsumer] = ()


def build_service(
    name: str,
    settings: Settings,
    broker: NatsBroker | None = None,
    metrics: Metrics | None = None,
    *,
    resources: Sequence[Callable[[], AbstractAsyncContextManager[Any]]] = (),
    consumers: Sequence[PullConsumer] = (),
    checks: Mapping[str, ReadinessCheck] | None = None,
    routers: Sequence[APIRouter] = (),
    on_ready: Sequence[Callable[[JetStreamContext], Awaitable[None]]] = (),
    choreography: Choreography | None = None,
    title: str | None = None,
    description: str = "",
    http_loop: EventLoop = "auto",
) -> Service:
    """Assemble a service; `resources` open in order before the subscribers start.
    `consumers` (shared.pull) start with the subscribers and stop before them.

    Pass `broker` and `metrics` when the service registers subscribers on them, and
    `choreography` when it takes part in workflows; `http_loop` is the event loop uvicorn
    serves it on.
    """
    broker = broker or create_broker(settings, name)
    metrics = metrics or Metrics(name)
    _document_publishers(broker, name)
    if choreography is not None:
        # The run-state bucket opens before the subscribers start.
        on_ready = [*on_ready, choreography.open]
        choreography.subscribe()
    all_checks: dict[str, ReadinessCheck] = {"nats": lambda: _nats_ready(broker)}
    all_checks.update(checks or {})
    watchdog = LoopWatchdog(settings.loop_stall_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The stack unwinds in reverse, so shutdown runs: stop consuming and let in-flight
        # handlers finish; close the resources (a final flush may still ack over NATS);
        # drain and close the NATS connection.
        async with AsyncExitStack() as stack:
            ticking = asyncio.create_task(watchdog.run())
            stack.callback(ticking.cancel)
            await broker.connect()
            stack.push_async_callback(broker.stop)
            js = jetstream(broker)
            await ensure_streams(js, settings)
            for resource in resources:
                await stack.enter_async_context(resource())
            for hook in on_ready:
                await hook(js)
            stack.push_async_callback(_stop_consuming, broker)
            await broker.start()
            for consumer in consumers:
                await stack.enter_async_context(consumer.running(js, DRAIN_TIMEOUT_S))
            log.info("service started", service=name)
            yield
            log.info("service stopping: draining in-flight messages", service=name)

    app = FastAPI(
        title=title or f"Choreo {name}",
        description=description,
        version="0.1.0",
        lifespan=lifespan,
    )

    @app.get(
        "/healthz",
        tags=["ops"],
        summary="The process is alive: 200, or 503 while its event loop is or just was blocked",
    )
    async def healthz() -> JSONResponse:
        problem = watchdog.problem()
        if problem is None:
            return JSONResponse({"status": "ok", "service": name})
        return JSONResponse(
            {"status": "stalled", "service": name, "detail": problem}, status_code=503
        )

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Connected to NATS and to its own backing stores",
        responses={503: {"description": "not ready: `checks` names what failed"}},
    )
    async def readyz() -> JSONResponse:
        results = await _run_checks(all_checks)
        ready = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "service": name, "checks": results},
            status_code=200 if ready else 503,
        )

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics (text exposition format)",
        response_class=PlainTextResponse,
    )
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    for router in routers:
        app.include_router(router)
    if settings.test_hooks:
        app.include_router(_test_hooks())
    permissions = SERVICE_PERMISSIONS.get(name)
    metrics.declare(
        consumed=[
            *(_subject(s) for s in broker.subscribers),
            *(subject for c in consumers for subject in c.subjects),
        ],
        published=permissions.publish if permissions else (),
    )
    return Service(name, settings, broker, metrics, app, all_checks, watchdog, http_loop, consumers)


def _freeze_heap_once_started(app: FastAPI) -> None:
    """Once the service has started, move everything it holds (modules, the app, schemas,
    restored state) out of reach of the cyclic garbage collector (`gc.freeze`).

    Without it, each full collection walks that whole heap: under load ingest ran one every
    half second, up to 176 ms each, and every request, a 429 included, waited for it."""
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        async with started(application) as state:
            gc.collect()
            gc.freeze()
            yield state

    app.router.lifespan_context = lifespan


def _test_hooks() -> APIRouter:
    """Fault-injection routes, only with CHOREO_TEST_HOOKS (never in prod)."""
    router = APIRouter(prefix="/testing", tags=["testing"])

    @router.post("/block-loop", status_code=202, summary="Block the event loop (a hung process)")
    async def block_loop(seconds: Annotated[float, Query(gt=0, le=3600)]) -> dict[str, float]:
        # Blocking on purpose, right after this answer has gone out: nothing else runs.
        asyncio.get_running_loop().call_later(0.05, time.sleep, seconds)
        return {"blocking_s": seconds}

    return router


def _subject(subscriber: object) -> str:
    """The subject a FastStream NATS subscriber consumes ("" when it does not say)."""
    return str(getattr(getattr(subscriber, "subject", None), "broker_address", ""))


async def _stop_consuming(broker: NatsBroker) -> None:
    """Stop every subscriber; each waits up to the graceful timeout for its handlers."""
    await asyncio.gather(*(subscriber.stop() for subscriber in broker.subscribers))


def _document_publishers(broker: NatsBroker, service: str) -> None:
    """Declare what the service publishes (its NATS permissions) for the AsyncAPI document;
    the service publishes through `EventPublisher`, not through these objects."""
    permissions = SERVICE_PERMISSIONS.get(service)
    for subject in permissions.publish if permissions else ():
        broker.publisher(
            subject,
            title=f"{service} publishes {subject}",
            description="CloudEvents 1.0 envelopes (shared.envelope.Event), JSON.",
            schema=Event,
        )


async def _nats_ready(broker: NatsBroker) -> None:
    if not broker.running or not await broker.ping(timeout=CHECK_TIMEOUT_S):
        raise ConnectionError("not connected to NATS")


async def _run_checks(checks: Mapping[str, ReadinessCheck]) -> dict[str, str]:
    async def one(check: ReadinessCheck) -> str:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
        except Exception as exc:
            return f"failed: {exc!r}"
        return "ok"

    names = list(checks)
    outcomes = await asyncio.gather(*(one(checks[n]) for n in names))
    return dict(zip(names, outcomes, strict=True))


def run(factory: Callable[[], Service]) -> None:
    """Serve one service until SIGTERM/SIGINT (`python -m services.<name>`)."""
    settings = Settings.load()
    configure_logging(settings.log_level, settings.log_format)
    serve_forever(factory())


def serve_forever(service: Service) -> None:
    """Serve a built service with uvicorn until SIGTERM/SIGINT (graceful in < 10 s)."""
    configure_logging(service.settings.log_level, service.settings.log_format, service=service.name)
    if configure_tracing(service.name):
        log.info("exporting spans over OTLP", service=service.name)
    _freeze_heap_once_started(service.http)
    config = uvicorn.Config(
        service.http,
        host=service.settings.http_host,
        port=service.settings.http_port,
        log_config=None,
        timeout_graceful_shutdown=HTTP_SHUTDOWN_TIMEOUT_S,
        lifespan="on",
        loop=service.http_loop,
    )
    if service.watchdog is not None and service.settings.health_port:
        # Liveness answered from a thread: a saturated (not blocked) loop still says alive.
        serve_health(
            service.watchdog, service.name, service.settings.http_host, service.settings.health_port
        )
    uvicorn.Server(config).run()
