"""The CLI's own behaviour, without a stack: version, completion, global options, output to
a pipe, validation of inputs, step order, takeovers and skipped steps as shown."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from choreo.cli import app
from choreo.cli.common import plural
from choreo.cli.runs import _dag_order, _taken_from
from choreo.follow import RunView, StepView
from shared.envelope import Event
from shared.workflow import events as ev
from shared.workflow.dag import order

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """As a user in a shell whose output goes to a pipe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_") and k != "COLUMNS"}
    return subprocess.run(
        [sys.executable, "-m", "choreo", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("choreo 0.")


@pytest.mark.parametrize(
    ("count", "noun", "many", "expected"),
    [
        (1, "step", None, "1 step"),
        (2, "step", None, "2 steps"),
        (0, "run", None, "0 runs"),
        (1, "entry", "entries", "1 entry"),
        (3, "entry", "entries", "3 entries"),
    ],
)
def test_plural(count: int, noun: str, many: str | None, expected: str) -> None:
    assert plural(count, noun, many) == expected


def test_shell_completion() -> None:
    choreo = str(Path(sys.executable).parent / "choreo")  # the installed command
    # As a user types it in bash: the shell is detected from the parent process, so bash is
    # kept as the parent (`&& :` stops bash from replacing itself with the command).
    bash = shutil.which("bash")
    assert bash is not None
    script = subprocess.run(
        [bash, "-c", '"$0" --show-completion && :', choreo],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "_CHOREO_COMPLETE=complete_bash" in script.stdout
    # What the script asks the command when a user types `choreo ru<TAB>`.
    env = {**os.environ, "COMP_WORDS": "choreo ru", "COMP_CWORD": "1"}
    env["_CHOREO_COMPLETE"] = "complete_bash"
    offered = subprocess.run([choreo], capture_output=True, text=True, env=env, check=True)
    assert offered.stdout.split() == ["run", "runs"]


def test_bench_runs_the_checkouts_suite(tmp_path: Path) -> None:
    # From any directory: the suite is found beside the package, and its own argument
    # check answers (an unknown section), so the command reached `python -m bench suite`.
    done = run_cli("bench", "no-such-section", cwd=tmp_path)
    assert done.returncode == 2
    assert "no bench/ beside" not in done.stderr
    assert "argument --only: invalid choice: 'no-such-section'" in done.stderr


def test_data_dir_before_the_subcommand(tmp_path: Path) -> None:
    before = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "x"), "ps", "--json"])
    after = CliRunner().invoke(app, ["ps", "--json", "--data-dir", str(tmp_path / "y")])
    assert json.loads(before.stdout)["data_dir"] == str(tmp_path / "x")
    assert json.loads(after.stdout)["data_dir"] == str(tmp_path / "y")
    # The subcommand's own option wins over the one before it.
    both = CliRunner().invoke(
        app, ["--data-dir", str(tmp_path / "x"), "ps", "--json", "--data-dir", str(tmp_path)]
    )
    assert json.loads(both.stdout)["data_dir"] == str(tmp_path)


def test_output_to_a_pipe_is_not_wrapped(tmp_path: Path) -> None:
    deep = tmp_path / ("a-directory-with-a-long-name-" * 4) / "workflow.json"
    deep.parent.mkdir(parents=True)
    deep.write_text((ROOT / "workflows/minio-store/workflow.json").read_text())
    result = run_cli("validate", str(deep))
    assert result.returncode == 0, result.stderr
    assert len(str(deep)) > 120
    assert f"{deep}: valid" in result.stdout.splitlines()[0]


def test_validate_checks_inputs_only_when_given(tmp_path: Path) -> None:
    workflow = {
        "name": "needs-a-date",
        "inputs": {"date": {"type": "string"}},  # required: no default
        "steps": [{"id": "log", "uses": "audit.log", "with": {"message": "{{ inputs.date }}"}}],
    }
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(workflow))
    plain = CliRunner().invoke(app, ["validate", str(path)])
    assert plain.exit_code == 0, plain.output
    assert "(needs-a-date, 1 step)" in plain.stdout
    wrong = CliRunner().invoke(app, ["validate", str(path), "--input", "other=1"])
    assert wrong.exit_code == 2
    assert "inputs.date" in wrong.stderr
    given = CliRunner().invoke(app, ["validate", str(path), "--input", "date=2024-01-01"])
    assert given.exit_code == 0, given.output


@pytest.mark.parametrize(
    ("needs", "expected"),
    [
        ({"a": [], "b": ["a"], "c": ["b"]}, ["a", "b", "c"]),
        ({"c": ["b"], "b": ["a"], "a": []}, ["a", "b", "c"]),
        (
            {"log": ["store"], "notify": ["store"], "store": ["q"], "q": []},
            ["q", "store", "log", "notify"],
        ),
        ({"x": ["y"], "y": ["x"], "z": []}, ["z", "x", "y"]),  # a cycle keeps its order, last
    ],
)
def test_dag_order(needs: dict[str, list[str]], expected: list[str]) -> None:
    assert order(needs) == expected


def started(step: str, attempt: int, taken_from: str | None = None) -> dict[str, Any]:
    data = {"step": step, "generation": 1, "taken_from": taken_from}
    return {"type": ev.STEP_STARTED, "stepid": step, "attempt": attempt, "data": data}


def test_status_reads_the_dag_order_and_takeovers_from_the_timeline() -> None:
    workflow = {
        "name": "w",
        "steps": [
            {"id": "report", "uses": "audit.log", "needs": ["load"]},
            {"id": "load", "uses": "audit.log"},
        ],
    }
    timeline = [
        {"type": ev.RUN_REQUESTED, "stepid": None, "attempt": None, "data": {"workflow": workflow}},
        started("load", 1),
        started("load", 1, taken_from="transform-abc"),
        started("report", 1),
    ]
    assert _dag_order(timeline) == ["load", "report"]
    step = {"stepid": "load", "attempt": 1, "generation": 1}
    assert _taken_from(timeline, step) == "transform-abc"
    assert _taken_from(timeline, {**step, "stepid": "report"}) is None


def event(event_type: str, **data: Any) -> Event:
    return Event(type=event_type, source="tests", runid="r", data=data)


def test_a_failed_run_is_settled_once_its_skipped_steps_are_known() -> None:
    view = RunView("r", {s: StepView(s, "audit.log") for s in ("a", "b", "c")})
    view.apply(event(ev.RUN_STARTED, name="w", inputs={}, steps=["a", "b", "c"]))
    view.apply(event(ev.STEP_STARTED, step="a", uses="audit.log", service="audit"))
    view.apply(event(ev.STEP_FAILED, step="a", error="boom"))
    view.apply(event(ev.RUN_FAILED, name="w", reason="step 'a' failed"))
    assert view.ended
    assert not view.settled  # b and c still show as waiting
    view.apply(event(ev.STEP_SKIPPED, step="b"))
    view.apply(event(ev.STEP_SKIPPED, step="c"))
    assert view.settled
    assert [s.state for s in view.steps.values()] == ["failed", "skipped", "skipped"]


def test_a_takeover_shows_in_the_live_view() -> None:
    view = RunView("r", {"a": StepView("a", "transform.sql")})
    view.apply(event(ev.STEP_STARTED, step="a", uses="transform.sql", service="transform"))
    assert view.steps["a"].taken_from is None
    view.apply(
        event(
            ev.STEP_STARTED,
            step="a",
            uses="transform.sql",
            service="transform",
            takeovers=1,
            taken_from="transform-1",
        )
    )
    assert view.steps["a"].taken_from == "transform-1"
