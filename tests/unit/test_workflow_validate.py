"""The validator reports every problem at once, each with its JSON path."""

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from shared.workflow import dag
from shared.workflow.kinds import STEP_KINDS, StepKind
from shared.workflow.spec import WorkflowSpec, json_schema
from shared.workflow.templates import render
from shared.workflow.validate import coerce_input, validate_workflow

ROOT = Path(__file__).resolve().parents[2]


def workflow(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "wf", "steps": list(steps), **extra}


def log(step_id: str, *needs: str, message: str = "hi") -> dict[str, Any]:
    return {"id": step_id, "uses": "audit.log", "needs": list(needs), "with": {"message": message}}


def test_a_valid_workflow_has_no_problems() -> None:
    result = validate_workflow(
        workflow(
            log("a", message="{{ inputs.day }}"),
            log("b", "a", message="{{ steps.a.output.event_id }}"),
            inputs={"day": {"type": "string", "default": "2024-01-15"}},
        ),
        inputs={},
    )
    assert result.problems == []
    assert result.ok
    assert result.inputs == {"day": "2024-01-15"}


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    document = workflow(
        log("a"),
        {"id": "b", "uses": "audit.lgo", "with": {"message": "x"}},
        log("c", "nope"),
        log("a"),
        log("d", "e"),
        log("e", "d"),
        log("f", message="{{ steps.c.output.x }} {{ inputs.missing }} {{ 1 + 2 }}"),
        log("g", "a", message="{{ steps.ghost.output.x }}"),
        {"id": "h", "uses": "store.put", "with": {"key": "k", "data": {}, "text": "t"}},
        {"id": "Bad Id", "uses": "audit.log", "with": {"message": 5}},
        inputs={"n": {"type": "integer", "default": "ten"}},
    )
    result = validate_workflow(document, inputs={"zzz": 1})
    found = {(p.path, p.message) for p in result.problems}
    paths = {p.path for p in result.problems}
    assert "$.steps[1].uses" in paths
    assert any("did you mean 'audit.log'" in p.message for p in result.problems)
    assert ("$.steps[2].needs[0]", "needs 'nope', which is not a step of this workflow") in found
    assert any(
        p.path == "$.steps[3].id" and "duplicate step id 'a'" in p.message for p in result.problems
    )
    assert any("cycle: d -> e -> d" in p.message for p in result.problems)
    f_with = [p.message for p in result.problems if p.path == "$.steps[6].with.message"]
    assert any("not upstream of 'f'" in m for m in f_with)
    assert any("unknown input 'missing'" in m for m in f_with)
    assert any("bad expression" in m for m in f_with)
    assert any("'ghost', which does not exist" in p.message for p in result.problems)
    assert ("$.steps[8].with", "store.put needs exactly one of 'layer' or 'bucket'") in found
    assert ("$.steps[8].with", "store.put needs exactly one of 'data' or 'text'") in found
    assert any(p.path == "$.steps[9].id" for p in result.problems)
    assert ("$.inputs.n.default", "default is not of type integer") in found
    assert not result.ok


def test_a_connection_string_as_source_is_refused() -> None:
    query = {
        "id": "q",
        "uses": "ingest.postgres_query",
        "with": {"source": "postgresql://u:secret@db/sales", "sql": "select 1"},
    }
    problems = validate_workflow(workflow(query)).problems
    assert [p.path for p in problems] == ["$.steps[0].with.source"]
    assert "secret" not in problems[0].message


def test_input_problems() -> None:
    document = workflow(
        log("a"),
        inputs={"day": {"type": "string"}, "n": {"type": "integer", "default": 3}},
    )
    result = validate_workflow(document, inputs={"n": "three", "dya": "x"})
    messages = {p.path: p.message for p in result.problems}
    assert messages["inputs.day"] == "required input not given (--input day=...)"
    assert messages["inputs.n"] == 'must be of type integer, got "three"'
    assert "did you mean 'day'" in messages["inputs.dya"]


def test_an_input_name_templates_cannot_read_is_refused() -> None:
    spec = {
        "name": "x",
        "inputs": {"bad-name": {"type": "string"}, "good_name": {"type": "string"}},
        "steps": [{"id": "a", "uses": "audit.log", "with": {"message": "hi"}}],
    }
    result = validate_workflow(spec, inputs={})
    assert [(p.path, p.message) for p in result.problems] == [
        (
            "$.inputs.bad-name",
            "an input's name is a letter or _, then letters, digits or _ (63 at most)",
        )
    ]


def test_structure_errors_have_json_paths() -> None:
    result = validate_workflow({"name": "wf", "steps": [{"id": "a", "with": {}}], "extra": 1})
    paths = {p.path for p in result.problems}
    assert {"$.steps[0].uses", "$.extra"} <= paths
    assert validate_workflow([]).problems[0].path == "$"
    assert validate_workflow({"name": "wf", "steps": []}).problems[0].path == "$.steps"


@pytest.mark.parametrize(
    ("raw", "kind", "value"),
    [("5", "integer", 5), ("5", "string", "5"), ("true", "boolean", True), ("x", "number", "x")],
)
def test_coerce_input(raw: str, kind: Any, value: object) -> None:
    assert coerce_input(raw, kind) == value


def example_worker_kinds(folder: Path) -> dict[str, StepKind]:
    """The kinds of an example's own worker (`*_worker.py` defining `worker`), if any."""
    kinds: dict[str, StepKind] = {}
    for module_path in folder.glob("*_worker.py"):
        spec = importlib.util.spec_from_file_location(module_path.stem, module_path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        kinds.update(module.worker.kinds)
    return kinds


def test_dag_helpers() -> None:
    needs = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    assert dag.roots(needs) == ["a"]
    assert dag.successors(needs, "a") == ["b", "c"]
    assert dag.ancestors(needs, "d") == {"a", "b", "c"}
    assert dag.descendants(needs, "b") == {"d"}
    assert dag.sinks(needs) == ["d"]
    assert dag.sinks({"x": [], "y": []}) == ["x", "y"]
    assert dag.cycles(needs) == []
    assert dag.cycles({"x": ["x"]}) == [["x", "x"]]


def test_shipped_schema_matches_the_models() -> None:
    shipped = json.loads((ROOT / "workflows" / "schema.json").read_text())
    assert shipped == json_schema(), "regenerate workflows/schema.json (see its test)"


def test_every_shipped_workflow_is_valid() -> None:
    for path in sorted((ROOT / "workflows").glob("*/workflow.json")):
        kinds = {**STEP_KINDS, **example_worker_kinds(path.parent)}
        document = json.loads(path.read_text())
        # A triggered workflow's runs get their event as the input `event`.
        inputs = {"event": {"id": "e-1", "data": {}}} if document.get("on") else {}
        result = validate_workflow(document, inputs=inputs, kinds=kinds)
        assert result.problems == [], f"{path}: {result.problems}"
        assert isinstance(result.spec, WorkflowSpec)


def test_a_triggered_workflow_declares_its_event_input_and_templates_read_it() -> None:
    step = {"id": "log", "uses": "audit.log", "with": {"message": "{{ event.data.region }}"}}
    base = {"name": "t", "on": [{"event": "sale", "where": {"data.region": "north"}}]}
    missing = validate_workflow({**base, "steps": [step]})
    declared = validate_workflow({**base, "inputs": {"event": {"type": "object"}}, "steps": [step]})
    assert any(p.path == "$.on" and '"event"' in p.message for p in missing.problems)
    assert declared.ok, declared.problems
    assert render(step["with"], {"event": {"data": {"region": "north"}}}, {}) == {
        "message": "north"
    }
    bad = validate_workflow({**base, "on": [{"event": "Sale!"}], "steps": [step]})
    assert [p.path for p in bad.problems if p.path.startswith("$.on[0]")] == ["$.on[0].event.event"]
