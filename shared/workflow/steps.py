"""The step author's API: what a step function gets (`StepContext`), how it fails for
good (`StepFailed`), and how a service declares the step kinds it implements
(`StepRegistry`). The runtime (`shared.workflow.runtime`) calls what is registered here.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of the step: use it to make effects happen once."""
        return f"{self.runid}:{self.step}"

    @property
    def log(self) -> Any:
        """A logger bound to the run, the step and the attempt."""
        return structlog.get_logger("choreo.step").bind(
            runid=self.runid, step=self.step, uses=self.uses, attempt=self.attempt
        )

    def progress(self, message: str, fraction: float | None = None) -> None:
        """Say how far the step got (logged with the step's run and attempt)."""
        self.log.info(message, progress=fraction)


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
