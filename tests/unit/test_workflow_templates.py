"""Template substitution: types kept when whole, text when embedded, precise errors."""

import pytest

from shared.workflow.templates import TemplateError, parse, render, templates_in

INPUTS = {"date": "2024-01-15", "limit": 10, "flags": {"a": True}}
OUTPUTS = {"query": {"uri": "s3://raw/x.jsonl", "rows": 42, "cols": ["a", "b"]}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{ inputs.limit }}", 10),
        ("{{inputs.flags}}", {"a": True}),
        ("{{ steps.query.output.rows }}", 42),
        ("{{ steps.query.output.cols.1 }}", "b"),
        ("rows={{ steps.query.output.rows }} on {{ inputs.date }}", "rows=42 on 2024-01-15"),
        ("flags: {{ inputs.flags }}", 'flags: {"a":true}'),
        ("{{ inputs.limit }}+{{ inputs.date }}", "10+2024-01-15"),
        (" {{ inputs.limit }}", " 10"),
        ("no templates", "no templates"),
        (
            {"a": ["{{ inputs.limit }}", {"b": "{{ steps.query.output.uri }}"}], "n": 3},
            {"a": [10, {"b": "s3://raw/x.jsonl"}], "n": 3},
        ),
    ],
)
def test_render(value: object, expected: object) -> None:
    assert render(value, INPUTS, OUTPUTS) == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("{{ inputs.missing }}", "no input named 'missing'"),
        ("{{ steps.other.output.uri }}", "step 'other' has no output yet"),
        (
            "{{ steps.query.output.bytes }}",
            "has no field 'bytes' (it has: ['cols', 'rows', 'uri'])",
        ),
        ("{{ steps.query.output.cols.5 }}", "has no field '5'"),
        ("{{ 1 + 1 }}", "bad expression"),
        ("{{ steps.query.uri }}", "bad expression"),
        ("{{ __import__('os') }}", "bad expression"),
    ],
)
def test_render_errors_name_the_problem(value: str, needle: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(value, INPUTS, OUTPUTS)
    assert needle in str(caught.value)


def test_templates_in_reports_json_paths() -> None:
    found = list(templates_in({"a": ["x", "{{ inputs.d }}"], "b": {"c": "{{ steps.s.output }}"}}))
    assert found == [(".a[1]", " inputs.d "), (".b.c", " steps.s.output ")]


def test_step_ids_with_dashes_parse() -> None:
    ref = parse(" steps.query-sales-data.output.uri ")
    assert (ref.root, ref.name, ref.path) == ("steps", "query-sales-data", ("uri",))
