"""The step author's API: what a step function gets (`StepContext`), how it fails for
good (`StepFailed`), and how a service declares the step kinds it implements
(`StepRegistry`). The runtime (`shared.workflow.runtime`) calls what is registered here.
"""

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import JsonValue

from shared.workflow.kinds import owner

StepOutput = dict[str, JsonValue]


@dataclass(frozen=True)
class StepContext:
    """What a step function gets: its rendered `with` and where it runs."""

    runid: str
    step: str
    uses: str
    attempt: int
    generation: int
    params: dict[str, Any]
    inputs: dict[str, Any]
    lines: list[dict[str, Any]] = field(default_factory=list, compare=False, repr=False)
    """What the step logged through `log` (kept with the run: `choreo logs`)."""

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of the step: use it to make effects happen once."""
        return f"{self.runid}:{self.step}"

    @property
    def log(self) -> "StepLog":
        """A logger bound to the run, the step and the attempt; what it logs is also kept
        with the run (`choreo logs RUN STEP`)."""
        return StepLog(self)

    def progress(self, message: str, fraction: float | None = None) -> None:
        """Say how far the step got (0.0 to 1.0), as a log line of the step."""
        self.log.info(message, progress=fraction)


class StepLog:
    """`ctx.log.info("message", key=value)`: to the process's log and the run's."""

    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx
        self._log = structlog.get_logger("choreo.step").bind(
            runid=ctx.runid, step=ctx.step, uses=ctx.uses, attempt=ctx.attempt
        )

    def debug(self, message: str, **fields: Any) -> None:
        self._emit("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._emit("warning", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("error", message, fields)

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> None:
        getattr(self._log, level)(message, **fields)
        self._ctx.lines.append(
            {
                "time": datetime.now(UTC).isoformat(),
                "level": level,
                "message": str(message),
                "fields": json.loads(json.dumps(fields, default=str)),
            }
        )


StepFunction = Callable[[StepContext], Awaitable[StepOutput]]


class StepFailed(Exception):
    """Raise from a step for a failure no retry can fix (the run fails at once)."""


class StepRegistry:
    """The step kinds one service implements: `@steps.kind("audit.log")`."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._functions: dict[str, StepFunction] = {}
        self.fallback: StepFunction | None = None
        """Runs the kinds routed here that no function is registered for (HTTP plugins)."""

    def kind(self, uses: str) -> Callable[[StepFunction], StepFunction]:
        if owner(uses) != self.service:
            raise ValueError(f"{uses!r} is owned by {owner(uses)!r}, not {self.service!r}")

        def register(function: StepFunction) -> StepFunction:
            self._functions[uses] = function
            return function

        return register

    def get(self, uses: str) -> StepFunction | None:
        return self._functions.get(uses, self.fallback)

    @property
    def kinds(self) -> list[str]:
        return sorted(self._functions)
