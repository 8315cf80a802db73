"""Write your own step kinds in Python: `choreo.sdk.Worker`.

    from choreo.sdk import Worker
    worker = Worker("acme")                      # owns the kinds "acme.*"

    @worker.step("acme.double")
    async def double(ctx, params):               # params: the rendered `with`
        return {"n": params["n"] * 2}            # a JSON object: the step's output

`choreo worker MODULE:ATTR [--concurrency N]` runs it; start it N times for N replicas. A
worker runs its steps through the same runtime as the built-in services: claim and lease,
retries with backoff, timeouts, cancellation, templates, outputs, replay safety. Annotate
`params` (and the return type) with pydantic models and the kind's `with` (and output) get
a JSON Schema that `choreo validate` checks before anything runs. On start the worker
announces its kinds in the step registry and keeps a heartbeat there while it runs.
"""

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, get_type_hints

import structlog
from pydantic import BaseModel, ValidationError

from shared.jetstream import jetstream
from shared.lake import LAYERS, layer_bucket, relative_key
from shared.metrics import Metrics
from shared.s3 import parse_s3_uri, s3_client, s3_uri
from shared.service import Service, build_service, create_broker
from shared.settings import Settings
from shared.slot import Slot
from shared.subjects import SERVICES
from shared.workflow.kinds import STEP_KINDS, StepKind, model_schema
from shared.workflow.registry import HEARTBEAT_S, WORKER_NAME, KindRegistry, open_registry
from shared.workflow.runtime import Choreography
from shared.workflow.steps import StepContext, StepFailed, StepOutput, StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

__all__ = ["Context", "Lake", "StepFailed", "Worker"]

log = structlog.get_logger(__name__)
Handler = Callable[..., Awaitable[Any]]


class Lake:
    """Read and write lake objects with the worker's own S3 credentials."""

    def __init__(self, settings: Settings, client: Callable[[], "S3Client"]) -> None:
        self._settings = settings
        self._client = client

    async def read(self, uri: str) -> bytes:
        """The object at `s3://bucket/key`."""
        bucket, key = parse_s3_uri(uri)
        response = await self._client().get_object(Bucket=bucket, Key=key)
        body: bytes = await response["Body"].read()
        return body

    async def write(
        self, key: str, body: bytes, *, layer: str = "staging", content_type: str = ""
    ) -> str:
        """Write `body` at `key` in `layer` (raw, staging, curated); its s3:// URI."""
        bucket = layer_bucket(self._settings, layer, LAYERS)
        await self._client().put_object(
            Bucket=bucket,
            Key=relative_key(key),
            Body=body,
            ContentType=content_type or "application/octet-stream",
        )
        return s3_uri(bucket, key)


@dataclass(frozen=True)
class Context(StepContext):
    """What a worker's step gets: the run, step and attempt, `idempotency_key` (the same
    for every attempt: make effects happen once with it), `log` (bound to the run and
    step), `progress(message, fraction)`, and `lake` (read and write objects)."""

    lake: Lake | None = None


class Worker:
    """Step kinds `<name>.*` implemented by Python functions; see the module docstring."""

    def __init__(self, name: str, *, description: str = "") -> None:
        if not WORKER_NAME.match(name):
            raise ValueError(
                f"worker name {name!r}: lower-case letters, digits and _, starting with a letter"
            )
        if name in SERVICES:
            raise ValueError(f"worker name {name!r} is a Choreo service's: choose another")
        self.name = name
        self.description = description or f"Choreo worker {name}"
        self.steps = StepRegistry(name)
        self.kinds: dict[str, StepKind] = {}
        self.instance = f"{name}-{uuid.uuid4().hex[:12]}"
        self._lake: Lake | None = None

    def step(
        self, uses: str, *, description: str = "", example: Mapping[str, Any] | None = None
    ) -> Callable[[Handler], Handler]:
        """Register `async def f(ctx, params)` as step kind `uses` (`<worker name>.<kind>`)."""
        if not uses.startswith(f"{self.name}.") or uses in STEP_KINDS:
            raise ValueError(f"worker {self.name!r} owns kinds named {self.name}.<kind>: {uses!r}")

        def register(handler: Handler) -> Handler:
            if not inspect.iscoroutinefunction(handler):
                raise TypeError(f"{uses}: the step function must be `async def f(ctx, params)`")
            params_model, output_model = _models(handler)
            self.steps.kind(uses)(self._adapt(uses, handler, params_model))
            doc = (handler.__doc__ or "").strip().splitlines()
            self.kinds[uses] = StepKind(
                uses,
                self.name,
                description or (doc[0] if doc else ""),
                model_schema(params_model, params=True) if params_model else None,
                model_schema(output_model) if output_model else None,
                dict(example or {}),
                "worker",
            )
            return handler

        return register

    def _adapt(
        self, uses: str, handler: Handler, params_model: type[BaseModel] | None
    ) -> Callable[[StepContext], Awaitable[StepOutput]]:
        async def run(ctx: StepContext) -> StepOutput:
            params: Any = ctx.params
            if params_model is not None:
                try:
                    params = params_model.model_validate(ctx.params)
                except ValidationError as exc:
                    raise StepFailed(f"{uses}: with does not fit: {exc}") from exc
            context = Context(
                **{f.name: getattr(ctx, f.name) for f in fields(ctx)}, lake=self._lake
            )
            result = await handler(context, params)
            if isinstance(result, BaseModel):
                result = result.model_dump(mode="json")
            if not isinstance(result, dict):
                raise StepFailed(
                    f"{uses} returned {type(result).__name__}: a step's output is a JSON object"
                )
            return result

        return run

    def service(self, settings: Settings | None = None, *, concurrency: int = 16) -> Service:
        """The worker as a runnable service (`choreo worker` serves it): health, readiness and
        metrics over HTTP, its steps over NATS."""
        if not self.kinds:
            raise ValueError(f"worker {self.name!r} has no steps: add some with @worker.step")
        settings = settings or Settings.load()
        metrics = Metrics(self.name)
        broker = create_broker(settings, self.name)
        choreography = Choreography.create(
            self.name, settings, broker, metrics, self.steps, concurrency=concurrency
        )
        client: Slot[S3Client] = Slot("the S3 client")
        self._lake = Lake(settings, client.get)

        @asynccontextmanager
        async def s3() -> AsyncIterator[None]:
            async with s3_client(settings) as opened:
                client.set(opened)
                try:
                    yield
                finally:
                    client.set(None)

        @asynccontextmanager
        async def presence() -> AsyncIterator[None]:
            registry = await open_registry(jetstream(broker), settings)
            await registry.announce(self.kinds.values())
            await registry.heartbeat(self.name, self.instance)
            beat = asyncio.create_task(self._beat(registry))
            log.info("worker announced", worker=self.name, kinds=sorted(self.kinds))
            try:
                yield
            finally:
                beat.cancel()
                await registry.leave(self.name, self.instance)

        return build_service(
            self.name,
            settings,
            broker,
            metrics,
            resources=[s3, presence],
            choreography=choreography,
            title=f"Choreo worker {self.name}",
            description=self.description,
        )

    async def _beat(self, registry: KindRegistry) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await registry.heartbeat(self.name, self.instance)
            except Exception as exc:  # NATS reconnecting: the next beat tries again
                log.warning("heartbeat failed", worker=self.name, error=repr(exc))


def _models(handler: Handler) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """The pydantic models `params` and the return value are annotated with, if any."""
    hints = get_type_hints(handler)
    names = list(inspect.signature(handler).parameters)
    if len(names) != 2:
        raise TypeError(f"{handler.__name__}: a step function takes (ctx, params)")
    params, output = hints.get(names[1]), hints.get("return")
    return (
        params if _is_model(params) else None,
        output if _is_model(output) else None,
    )


def _is_model(hint: Any) -> bool:
    return inspect.isclass(hint) and issubclass(hint, BaseModel)
