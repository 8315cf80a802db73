"""A step kind's contract as people read it: the parameter and output tables of
`choreo steps KIND` and of docs/steps.md (generated: `choreo steps --markdown`)."""

import json
from collections.abc import Iterable, Mapping
from typing import Any

from shared.workflow.kinds import StepKind

MARKDOWN_HEADER = """# Step kinds

Every kind a workflow step may `use`, generated from the kinds' declared contracts
(`choreo steps --markdown > docs/steps.md`; a test fails when this page is stale).
`choreo steps` lists the same kinds plus those that running workers and HTTP plugins
registered; `choreo steps KIND` shows one.

`choreo validate` checks every step's `with` against its kind: unknown keys are refused
(with the closest known one suggested), types and allowed values are checked, and a
template that reads `{{ steps.<id>.output.<field> }}` must name a field the upstream
kind declares. Any value may be a template (`{{ inputs.x }}`, `{{ steps.a.output.uri }}`):
it is checked against the kind's schema once rendered, when the step runs.
"""


def type_of(schema: Mapping[str, Any]) -> str:
    """A JSON Schema's type in a few words: `string`, `"a" | "b"`, `object of integer`."""
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(type_of(option) for option in schema["anyOf"])
    kind = schema.get("type")
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        return f"array of {type_of(schema['items'])}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
        return f"object of {type_of(schema['additionalProperties'])}"
    if isinstance(kind, str):
        return kind
    return "any JSON"


def _constraints(schema: Mapping[str, Any]) -> str:
    return f"; matches `{schema['pattern']}`" if "pattern" in schema else ""


def rows(schema: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """One row per property: name, type, required / default, description."""
    if not schema:
        return []
    required = set(schema.get("required", []))
    found = []
    for name, prop in schema.get("properties", {}).items():
        if name in required:
            need = "required"
        elif prop.get("default") not in (None, [], {}):
            need = f"default {json.dumps(prop['default'])}"
        else:
            need = "optional"
        found.append(
            {
                "name": name,
                "type": type_of(prop),
                "need": need,
                "description": prop.get("description", "") + _constraints(prop),
            }
        )
    return found


def groups(schema: Mapping[str, Any] | None) -> list[str]:
    """`exactly one of ...` lines, from the schema's oneOf-of-required groups."""
    found = []
    for part in (schema or {}).get("allOf", []):
        keys = [key for option in part.get("oneOf", []) for key in option.get("required", [])]
        if keys:
            found.append("exactly one of " + " or ".join(f"`{key}`" for key in keys))
    return found


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: str, entries: list[dict[str, str]], columns: Iterable[str]) -> list[str]:
    columns = list(columns)
    lines = [f"| {header} | " + " | ".join(columns[1:]) + " |", "|---" * len(columns) + "|"]
    for entry in entries:
        cells = [f"`{entry['name']}`", *(_escape(entry[c]) for c in columns[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def kind_markdown(kind: StepKind) -> str:
    lines = [f"## `{kind.uses}`", "", f"{kind.description} Run by: {kind.service}.", ""]
    if kind.with_schema is None:
        lines += ["`with`: any object (the kind declares no schema).", ""]
    else:
        lines += _table(
            "`with` key", rows(kind.with_schema), ["name", "type", "need", "description"]
        )
        lines += [""]
        lines += [f"`with` needs {group}." for group in groups(kind.with_schema)]
        lines += [""] if groups(kind.with_schema) else []
    if kind.output_schema is None:
        lines += ["Output: not declared.", ""]
    else:
        output = rows(kind.output_schema)
        lines += [*_table("output field", output, ["name", "type", "description"]), ""]
    lines += ["Example `with`:", "", "```json", json.dumps(kind.example, indent=2), "```", ""]
    return "\n".join(lines)


def markdown(kinds: Mapping[str, StepKind]) -> str:
    index = [
        f"| [`{k.uses}`](#{k.uses.replace('.', '')}) | {k.service} | {k.description} |"
        for k in _sorted(kinds)
    ]
    parts = [
        MARKDOWN_HEADER,
        "| kind | run by | what it does |",
        "|---|---|---|",
        *index,
        "",
        *(kind_markdown(kind) for kind in _sorted(kinds)),
    ]
    return "\n".join(parts).rstrip() + "\n"


def _sorted(kinds: Mapping[str, StepKind]) -> list[StepKind]:
    return [kinds[uses] for uses in sorted(kinds)]
