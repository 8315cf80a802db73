"""`{{ inputs.x }}`, `{{ event.<path> }}` (a triggered run's input `event`) and
`{{ steps.<id>.output.<path> }}` substitution in a step's `with`.

Substitution, not a template language: an expression is a dotted path into the inputs or
an upstream step's output, nothing is evaluated. A template that is the whole string keeps
the value's JSON type (a number stays a number); inside a longer string it becomes text
(objects and lists as compact JSON).
"""

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# The inside may not contain "}}", so one match never spans two templates.
TEMPLATE = re.compile(r"\{\{((?:(?!\}\}).)*)\}\}")
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_-]*"
EXPRESSION = re.compile(rf"^\s*({_SEGMENT}(?:\.{_SEGMENT})*)\s*$")


class TemplateError(ValueError):
    """A template that cannot be rendered: names what is missing and where."""


@dataclass(frozen=True)
class Reference:
    """A parsed expression: `inputs.<name>...` or `steps.<step>.output...`."""

    root: str  # "inputs" or "steps"
    name: str  # the input name or the step id
    path: tuple[str, ...]  # what follows (for steps: after "output")
    text: str  # the expression as written


def parse(expression: str) -> Reference:
    """Parse one expression (the text between `{{` and `}}`)."""
    match = EXPRESSION.match(expression)
    if not match:
        raise TemplateError(
            f"bad expression {{{{{expression}}}}}: use inputs.<name>, event.<field> or "
            "steps.<id>.output.<field>"
        )
    text = match.group(1)
    parts = text.split(".")
    if parts[0] == "inputs" and len(parts) >= 2:
        return Reference("inputs", parts[1], tuple(parts[2:]), text)
    if parts[0] == "event":
        # A triggered run's event is its input `event`: {{ event.data.region }}.
        return Reference("inputs", "event", tuple(parts[1:]), text)
    if parts[0] == "steps" and len(parts) >= 3 and parts[2] == "output":
        return Reference("steps", parts[1], tuple(parts[3:]), text)
    raise TemplateError(
        f"bad expression {{{{{text}}}}}: use inputs.<name>, event.<field> or "
        "steps.<id>.output.<field>"
    )


def templates_in(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (JSON path, expression) in a nested JSON value, for validation."""
    if isinstance(value, str):
        for match in TEMPLATE.finditer(value):
            yield path, match.group(1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from templates_in(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from templates_in(item, f"{path}[{index}]")


def referenced_steps(value: Any) -> set[str]:
    """The ids of the steps whose outputs `value`'s templates read."""
    names = set()
    for _, expression in templates_in(value):
        ref = parse(expression)
        if ref.root == "steps":
            names.add(ref.name)
    return names


def render(value: Any, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    """`value` with every template replaced; `outputs` maps step id -> that step's output."""
    if isinstance(value, str):
        whole = TEMPLATE.fullmatch(value.strip())
        if whole and value.strip() == value:
            return resolve(parse(whole.group(1)), inputs, outputs)
        return TEMPLATE.sub(lambda m: _text(resolve(parse(m.group(1)), inputs, outputs)), value)
    if isinstance(value, Mapping):
        return {key: render(item, inputs, outputs) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, inputs, outputs) for item in value]
    return value


def resolve(ref: Reference, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    if ref.root == "inputs":
        if ref.name not in inputs:
            raise TemplateError(f"{{{{ {ref.text} }}}}: no input named {ref.name!r}")
        current, walked = inputs[ref.name], f"inputs.{ref.name}"
    else:
        if ref.name not in outputs:
            raise TemplateError(f"{{{{ {ref.text} }}}}: step {ref.name!r} has no output yet")
        current, walked = outputs[ref.name], f"steps.{ref.name}.output"
    for part in ref.path:
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            have = sorted(current) if isinstance(current, Mapping) else type(current).__name__
            raise TemplateError(
                f"{{{{ {ref.text} }}}}: {walked} has no field {part!r} (it has: {have})"
            )
        walked = f"{walked}.{part}"
    return current


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))
