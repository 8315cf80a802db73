"""Step kinds (`uses`): each one's contract and the service or worker that runs it.

A kind is a declared contract: name, owner, a one-line description, the JSON Schema of its
`with` (unknown keys refused; a template string is accepted wherever a typed value is
expected) and of its `output`, and an example. The built-ins are declared in
`shared.workflow.builtins`; workers and HTTP plugins announce theirs in the registry.
The validator checks every step against its kind's contract; step requests are routed to
the owner (`wf.step.<owner>.requested`). A kind not in the table is owned by the prefix of
its name (`<owner>.<name>`).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from shared.workflow import builtins

Origin = Literal["built-in", "worker", "plugin"]


class _OutputSchema(GenerateJsonSchema):
    """JSON Schema without pydantic's generated titles."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def model_schema(self, schema: core_schema.ModelSchema) -> dict[str, Any]:
        generated = super().model_schema(schema)
        generated.pop("title", None)
        return generated


class _WithSchema(_OutputSchema):
    """`with` keys that default to None are simply optional: not given, rather than null."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> dict[str, Any]:
        return self.generate_inner(schema["schema"])


def model_schema(model: type[BaseModel], *, params: bool = False) -> dict[str, Any]:
    """The JSON Schema of a `with` (`params`) or output model."""
    return model.model_json_schema(schema_generator=_WithSchema if params else _OutputSchema)


@dataclass(frozen=True)
class StepKind:
    uses: str
    service: str
    """Who runs it: a service, a worker's name, or the plugin gateway."""
    description: str = ""
    with_schema: Mapping[str, Any] | None = None
    """JSON Schema of `with`; None accepts any object."""
    output_schema: Mapping[str, Any] | None = None
    """JSON Schema of the output; None declares nothing about it."""
    example: Mapping[str, Any] = field(default_factory=dict)
    origin: Origin = "built-in"
    url: str | None = None
    """An HTTP plugin's endpoint (POSTed once per attempt)."""
    timeout_s: float | None = None
    """An HTTP plugin's request timeout."""

    @classmethod
    def declare(
        cls,
        uses: str,
        service: str,
        description: str,
        params: type[BaseModel],
        output: type[BaseModel],
        example: Mapping[str, Any],
        origin: Origin = "built-in",
    ) -> "StepKind":
        """A contract from pydantic models of `with` and of the output."""
        return cls(
            uses,
            service,
            description,
            model_schema(params, params=True),
            model_schema(output),
            example,
            origin,
        )

    def output_fields(self) -> list[str] | None:
        """The top-level output fields, when the output schema lists them all (else None)."""
        schema = self.output_schema
        if not schema or schema.get("additionalProperties", True) is not False:
            return None
        return sorted(schema.get("properties", {}))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "StepKind":
        return cls(
            data["uses"],
            data["owner"],
            data.get("description", ""),
            data.get("with"),
            data.get("output"),
            data.get("example") or {},
            data.get("origin", "worker"),
            data.get("url"),
            data.get("timeout_s"),
        )

    def describe(self) -> dict[str, Any]:
        """The contract as JSON (what `choreo steps KIND --json` prints and the registry
        stores; `from_json` reads it back)."""
        return {
            "uses": self.uses,
            "owner": self.service,
            "origin": self.origin,
            "description": self.description,
            "with": self.with_schema,
            "output": self.output_schema,
            "example": dict(self.example),
            **({"url": self.url, "timeout_s": self.timeout_s} if self.origin == "plugin" else {}),
        }


STEP_KINDS: dict[str, StepKind] = {
    c.uses: StepKind.declare(c.uses, c.service, c.description, c.params, c.output, c.example)
    for c in builtins.BUILTINS
}


def owner(uses: str) -> str:
    """The service that runs steps of kind `uses`."""
    known = STEP_KINDS.get(uses)
    return known.service if known else uses.split(".", 1)[0]
