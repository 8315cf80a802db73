"""Hypothesis against the workflow validator: whatever document it is given it answers with
problems (never an exception), and every workflow it accepts can start: it round-trips
through the run record, its steps have an order, and its first steps' `with` render with
the run's inputs, as the runtime does when it requests them."""

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shared.workflow import dag
from shared.workflow.kinds import STEP_KINDS
from shared.workflow.spec import WorkflowSpec
from shared.workflow.templates import render
from shared.workflow.validate import validate_workflow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    json.loads(path.read_text()) for path in sorted((ROOT / "workflows").glob("*/workflow.json"))
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
templates = st.sampled_from(
    [
        "{{ inputs.date }}",
        "{{ inputs.missing }}",
        "{{ steps.load.output.uri }}",
        "{{ 1 + 2 }}",
        "{{",
    ]
)
kinds = st.sampled_from([*STEP_KINDS, "audit.lgo"])


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A shipped workflow (valid) with up to four changes, most of which break it: the
    validator sees accepted documents as often as refused ones."""
    document: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    steps: list[Any] = document["steps"]
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 4]))):
        if not steps:
            steps.append(draw(json_values))
            continue
        index = draw(st.integers(0, len(steps) - 1))
        step = steps[index]
        change = draw(st.integers(0, 9))
        if change == 0:
            del steps[index]
        elif change == 1:
            steps.append(copy.deepcopy(step))  # a duplicate id
        elif change == 2:
            steps.insert(0, steps.pop())  # order in the file does not matter
        elif not isinstance(step, dict):
            continue
        elif change == 3:
            step["id"] = draw(st.sampled_from(["renamed", "Bad Id", "", "x" * 70]))
        elif change == 4:
            # A step drawn from json_values may have no id, or needs that are not a list.
            needs = step.get("needs")
            needed = draw(st.sampled_from(["ghost", step.get("id", "ghost")]))
            step["needs"] = [*(needs if isinstance(needs, list) else []), needed]
        elif change == 5:
            step["uses"] = draw(kinds)
        elif change == 6:
            key = draw(st.sampled_from([*step.get("with", {}), "extra"]))
            step.setdefault("with", {})[key] = draw(templates | json_values)
        elif change == 7:
            step[draw(st.sampled_from(["retry", "timeout_s", "with", "needs", "junk"]))] = draw(
                json_values
            )
        elif change == 8:
            field = draw(st.sampled_from(["inputs", "defaults", "name", "description"]))
            document[field] = draw(json_values)
        else:
            steps[index] = draw(json_values)
    return document


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=mutated() | json_values,
    inputs=st.none()
    | st.just({})
    | st.dictionaries(st.sampled_from(["date", "n", "x"]), json_values, max_size=2),
)
def test_the_validator_never_crashes_and_what_it_accepts_can_start(
    document: Any, inputs: dict[str, Any] | None
) -> None:
    checked = validate_workflow(document, inputs)
    assert all(p.path.startswith(("$", "inputs")) and p.message for p in checked.problems)
    event("accepted" if checked.ok else "refused")
    if not checked.ok:
        assert checked.problems, "refused without saying why"
        return
    assert checked.spec is not None
    # What the runtime stores in the run record and reads back (cancel, retry).
    record = json.loads(json.dumps(checked.spec.dump()))
    again = WorkflowSpec.model_validate(record)
    assert again == checked.spec
    assert validate_workflow(record, inputs).ok
    needs = {step.id: step.needs for step in again.steps}
    assert sorted(dag.order(needs)) == sorted(needs)
    roots = dag.roots(needs)
    assert roots, "an accepted workflow has a step to start with"
    defaults_only = validate_workflow(record, {})
    if inputs is None and not defaults_only.ok:
        # A required input (a triggered workflow's `event`): no run starts without it.
        assert all(p.path.startswith("inputs.") for p in defaults_only.problems)
        return
    run_inputs = checked.inputs if inputs is not None else defaults_only.inputs
    for root in roots:
        render(again.step(root).with_, run_inputs, {})
