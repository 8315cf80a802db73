"""Workflow validation: every problem at once, each with its JSON path and a plain sentence.

Structure comes from the pydantic models; the rest is checked on the raw document so that
one broken step does not hide the problems of the others.
"""

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from pydantic import ValidationError

from shared.workflow import dag
from shared.workflow.kinds import STEP_KINDS, StepKind
from shared.workflow.spec import WorkflowSpec
from shared.workflow.templates import TEMPLATE, TemplateError, parse, templates_in

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Validated:
    """The outcome: the parsed spec (None when its structure is broken), inputs, problems."""

    spec: WorkflowSpec | None
    inputs: dict[str, Any]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems and self.spec is not None


def validate_workflow(
    document: Any,
    inputs: Mapping[str, Any] | None = None,
    kinds: Mapping[str, StepKind] = STEP_KINDS,
) -> Validated:
    """Check a workflow document and, when given, the inputs of a run of it."""
    if not isinstance(document, dict):
        return Validated(None, {}, [Problem("$", "a workflow is a JSON object")])
    problems: list[Problem] = []
    spec: WorkflowSpec | None = None
    try:
        spec = WorkflowSpec.model_validate(document)
    except ValidationError as exc:
        problems.extend(Problem(_json_path(e["loc"]), _message(e)) for e in exc.errors())

    steps = _raw_steps(document)
    raw_inputs = document.get("inputs")
    declared: dict[str, Any] = raw_inputs if isinstance(raw_inputs, dict) else {}
    problems += _check_steps(steps, kinds, declared)
    problems += _check_defaults(declared)
    if document.get("on") and not isinstance(declared.get("event"), dict):
        problems.append(
            Problem(
                "$.on",
                'a triggered workflow declares the input "event" ({"type": "object"}): '
                "each run gets its event there",
            )
        )
    effective: dict[str, Any] = {}
    if spec is not None and inputs is not None:
        effective, input_problems = check_inputs(spec, inputs)
        problems += input_problems
    return Validated(spec, effective, problems)


def check_inputs(
    spec: WorkflowSpec, given: Mapping[str, Any]
) -> tuple[dict[str, Any], list[Problem]]:
    """The run's inputs (defaults filled in) and what is wrong with the given ones."""
    problems = [
        Problem(f"inputs.{name}", f"unknown input {name!r}{suggest(name, spec.inputs)}")
        for name in given
        if name not in spec.inputs
    ]
    effective: dict[str, Any] = {}
    for name, declared in spec.inputs.items():
        if name in given:
            value = given[name]
            if not _is_type(value, declared.type):
                problems.append(
                    Problem(
                        f"inputs.{name}",
                        f"must be of type {declared.type}, got {json.dumps(value)}",
                    )
                )
            effective[name] = value
        elif declared.default is not None:
            effective[name] = declared.default
        else:
            problems.append(
                Problem(f"inputs.{name}", f"required input not given (--input {name}=...)")
            )
    return effective, problems


def coerce_input(raw: str, kind: str) -> Any:
    """A command-line `--input k=v` value as the declared type (strings stay strings)."""
    if kind == "string":
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw  # reported by check_inputs as the wrong type


def _check_steps(
    steps: list[tuple[int, dict[str, Any]]],
    kinds: Mapping[str, StepKind],
    declared_inputs: Mapping[str, Any],
) -> list[Problem]:
    problems: list[Problem] = []
    first_index: dict[str, int] = {}
    needs: dict[str, list[str]] = {}
    uses_of: dict[str, str] = {}
    for index, step in steps:
        step_id = step.get("id")
        if not isinstance(step_id, str):
            continue
        if step_id in first_index:
            problems.append(
                Problem(
                    f"$.steps[{index}].id",
                    f"duplicate step id {step_id!r} (also $.steps[{first_index[step_id]}])",
                )
            )
            continue
        first_index[step_id] = index
        if isinstance(step.get("uses"), str):
            uses_of[step_id] = step["uses"]
        raw_needs = step.get("needs", [])
        needs[step_id] = (
            [n for n in raw_needs if isinstance(n, str)] if isinstance(raw_needs, list) else []
        )

    for index, step in steps:
        step_id = step.get("id")
        here = f"$.steps[{index}]"
        uses = step.get("uses")
        if isinstance(uses, str):
            if uses not in kinds:
                problems.append(
                    Problem(
                        f"{here}.uses",
                        f"unknown step kind {uses!r}{suggest(uses, kinds)}; registered: "
                        f"{', '.join(sorted(kinds))}",
                    )
                )
            elif isinstance(step.get("with", {}), dict):
                problems += _check_with(kinds[uses], step.get("with", {}), f"{here}.with")
        for k, need in enumerate(needs.get(step_id, []) if isinstance(step_id, str) else []):
            if need not in needs:
                problems.append(
                    Problem(
                        f"{here}.needs[{k}]",
                        f"needs {need!r}, which is not a step of this workflow"
                        f"{suggest(need, needs)}",
                    )
                )
        if isinstance(step_id, str) and step_id in needs:
            problems += _check_templates(
                step_id,
                step.get("with", {}),
                f"{here}.with",
                needs,
                declared_inputs,
                {s: kinds[u] for s, u in uses_of.items() if u in kinds},
            )

    for cycle in dag.cycles(needs):
        problems.append(
            Problem(
                f"$.steps[{first_index[cycle[0]]}].needs",
                f"cycle: {' -> '.join(cycle)} (a step cannot wait for itself)",
            )
        )
    return problems


def looks_like_dsn(source: str) -> bool:
    """A URL (`postgresql://...`) or a libpq key/value string (`host=... dbname=...`)."""
    return "://" in source or "=" in source or "@" in source


def _check_with(kind: StepKind, with_: Mapping[str, Any], path: str) -> list[Problem]:
    schema = kind.with_schema
    problems = [] if schema is None else schema_problems(schema, with_, path, kind.uses)
    source = with_.get("source")
    if kind.uses == "ingest.postgres_query" and isinstance(source, str) and looks_like_dsn(source):
        # The workflow travels in events and the audit trail: a DSN there leaks credentials.
        problems.append(
            Problem(
                f"{path}.source",
                "name a configured source (CHOREO_INGEST_SOURCES), never a connection string",
            )
        )
    return problems


def schema_problems(
    schema: Mapping[str, Any], value: Any, path: str, name: str = "it"
) -> list[Problem]:
    """What is wrong with `value` (a step's `with`, a worker's output) against a kind's
    JSON Schema, each with its path. A string holding a template stands for any value: it
    is checked when rendered, not here."""
    problems: list[Problem] = []
    errors = Draft202012Validator(schema).iter_errors(value)
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        if isinstance(error.instance, str) and TEMPLATE.search(error.instance):
            continue
        problems += _explain(error, path + _suffix(error.absolute_path), name)
    return problems


def _explain(error: SchemaError, where: str, name: str) -> list[Problem]:
    instance, schema, expected = error.instance, error.schema, error.validator_value
    if not isinstance(schema, Mapping):
        return [Problem(where, error.message)]
    if error.validator == "additionalProperties" and isinstance(instance, Mapping):
        known = schema.get("properties", {})
        return [
            Problem(f"{where}.{key}", f"unknown key {key!r}{suggest(key, known)}")
            for key in instance
            if key not in known
        ]
    if (
        error.validator == "required"
        and isinstance(instance, Mapping)
        and isinstance(expected, list)
    ):
        return [Problem(where, f"{name} needs {key!r}") for key in expected if key not in instance]
    if (
        error.validator == "oneOf"
        and isinstance(expected, list)
        and all(set(s) == {"required"} for s in expected)
    ):
        keys = " or ".join(repr(key) for s in expected for key in s["required"])
        return [Problem(where, f"{name} needs exactly one of {keys}")]
    got = f", got {json.dumps(instance)}"
    if "x-error" in schema:
        return [Problem(where, f"{schema['x-error']}{got}")]
    if error.validator == "enum" and isinstance(expected, list):
        options = ", ".join(json.dumps(option) for option in expected)
        return [Problem(where, f"must be one of {options}{got}")]
    if error.validator == "type":
        kinds = expected if isinstance(expected, list) else [expected]
        return [Problem(where, f"must be of type {' or '.join(map(str, kinds))}{got}")]
    return [Problem(where, error.message)]


def _suffix(parts: Iterable[str | int]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts)


def _check_templates(
    step_id: str,
    with_: Any,
    path: str,
    needs: Mapping[str, list[str]],
    declared_inputs: Mapping[str, Any],
    kind_of: Mapping[str, StepKind],
) -> list[Problem]:
    problems: list[Problem] = []
    upstream = dag.ancestors(needs, step_id)
    for where, expression in templates_in(with_, path):
        try:
            ref = parse(expression)
        except TemplateError as exc:
            problems.append(Problem(where, str(exc)))
            continue
        if ref.root == "inputs" and ref.name not in declared_inputs:
            problems.append(
                Problem(
                    where,
                    f"{{{{ {ref.text} }}}} names unknown input {ref.name!r}"
                    f"{suggest(ref.name, declared_inputs)}",
                )
            )
        elif ref.root == "steps" and ref.name not in needs:
            problems.append(
                Problem(
                    where, f"{{{{ {ref.text} }}}} names step {ref.name!r}, which does not exist"
                )
            )
        elif ref.root == "steps" and ref.name not in upstream:
            problems.append(
                Problem(
                    where,
                    f"{{{{ {ref.text} }}}} names step {ref.name!r}, which is not upstream of "
                    f"{step_id!r}: add it to {step_id!r}'s needs",
                )
            )
        elif ref.root == "steps" and ref.path and ref.name in kind_of:
            problems += _check_output_field(where, ref.text, ref.path[0], kind_of[ref.name])
    return problems


def _check_output_field(where: str, text: str, field: str, kind: StepKind) -> list[Problem]:
    """A template reading `steps.x.output.<field>`: the field must be one x's kind declares."""
    fields = kind.output_fields()
    if fields is None or field in fields:
        return []
    declared = dict.fromkeys(fields)
    return [
        Problem(
            where,
            f"{{{{ {text} }}}} reads output {field!r}, which {kind.uses} does not declare"
            f"{suggest(field, declared)}; it declares {', '.join(fields)}",
        )
    ]


def _check_defaults(declared: Mapping[str, Any]) -> list[Problem]:
    problems = []
    for name, spec in declared.items():
        if not isinstance(spec, dict) or spec.get("default") is None:
            continue
        kind = spec.get("type", "string")
        if kind in _PYTHON_TYPES and not _is_type(spec["default"], kind):
            problems.append(Problem(f"$.inputs.{name}.default", f"default is not of type {kind}"))
    return problems


def _raw_steps(document: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    steps = document.get("steps")
    if not isinstance(steps, list):
        return []
    return [(i, s) for i, s in enumerate(steps) if isinstance(s, dict)]


def _is_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind != "boolean":
        return False
    return isinstance(value, _PYTHON_TYPES[kind])


def _json_path(loc: tuple[int | str, ...]) -> str:
    # pydantic marks an error in a mapping's key with a "[key]" element after the key.
    return "$" + _suffix(tuple(part for part in loc if part != "[key]"))


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["loc"][-1:] == ("[key]",) and error["loc"][:1] == ("inputs",):
        return "an input's name is a letter or _, then letters, digits or _ (63 at most)"
    return str(error["msg"])


def suggest(name: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
