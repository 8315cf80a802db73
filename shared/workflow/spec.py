"""The workflow file format (docs/reference/workflow-format.md) as pydantic models.

`workflows/schema.json` is generated from `WorkflowSpec` (a test keeps it in sync), so
editors can validate workflow files as they are written.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, JsonValue, StringConstraints, Tag

STEP_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
INPUT_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"

InputName = Annotated[str, StringConstraints(pattern=INPUT_NAME_PATTERN)]
"""An input's name: what templates read as `inputs.<name>`."""

InputType = Literal["string", "number", "integer", "boolean", "object", "array"]


class RetryPolicy(BaseModel):
    """How often a failing step is attempted, and the pauses between attempts."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=1, ge=1, le=100)
    backoff_s: list[float] = Field(
        default_factory=lambda: [1.0, 5.0, 30.0],
        description="pause before attempt 2, 3, ...; the last value repeats",
    )

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (2 and later)."""
        if attempt <= 1 or not self.backoff_s:
            return 0.0
        return self.backoff_s[min(attempt - 2, len(self.backoff_s) - 1)]


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_s: float = Field(default=300.0, gt=0, le=24 * 3600)


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: InputType = "string"
    default: JsonValue = None
    description: str | None = None


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(pattern=STEP_ID_PATTERN)
    uses: str = Field(description="the step kind, e.g. store.put")
    needs: list[str] = Field(default_factory=list, description="ids of steps to finish first")
    with_: dict[str, JsonValue] = Field(default_factory=dict, alias="with")
    retry: RetryPolicy | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=24 * 3600)


class EventTrigger(BaseModel):
    """Start a run for each event of a type whose fields equal `where` (a deployed
    workflow's `on`)."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="the event type")
    where: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="equality filters: a dotted path into the event (data.region) -> value",
    )


class ObjectTrigger(BaseModel):
    """Start a run for each object written to the lake whose `bucket/key` matches `object`
    (`*` within a path segment, `**` across segments)."""

    model_config = ConfigDict(extra="forbid")

    object: str = Field(min_length=1, description="a glob over bucket/key: raw/files/**.csv")


def _trigger_kind(value: Any) -> str:
    """Which trigger a value is: one with `object` is an object trigger (so validation
    reports against that shape only, not against both)."""
    if isinstance(value, dict):
        return "object" if "object" in value else "event"
    return "object" if isinstance(value, ObjectTrigger) else "event"


Trigger = Annotated[
    Annotated[EventTrigger, Tag("event")] | Annotated[ObjectTrigger, Tag("object")],
    Discriminator(_trigger_kind),
]


class WorkflowSpec(BaseModel):
    """A workflow: inputs, defaults and a DAG of steps."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"$id": "https://choreo.dev/workflow.schema.json"}
    )

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    description: str | None = None
    inputs: dict[InputName, InputSpec] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    steps: list[StepSpec] = Field(min_length=1)
    on: list[Trigger] = Field(
        default_factory=list,
        description="once deployed, every matching event starts one run (its input `event`)",
    )
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="runs of the workflow at once, however started; more wait their turn",
    )

    def step(self, step_id: str) -> StepSpec:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def retry_of(self, step: StepSpec) -> RetryPolicy:
        return step.retry or self.defaults.retry

    def timeout_of(self, step: StepSpec) -> float:
        return step.timeout_s or self.defaults.timeout_s

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def json_schema() -> dict[str, Any]:
    schema = WorkflowSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Choreo workflow"
    return schema
