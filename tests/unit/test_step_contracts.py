"""Every step kind is a declared contract: the validator checks each step's `with` against
it (all problems at once, with paths and suggestions), templates reading an upstream output
against the fields its kind declares; `choreo steps` and docs/steps.md show the contracts."""

import json
from pathlib import Path
from typing import Any, get_args

from typer.testing import CliRunner

from choreo.cli import app
from choreo.step_reference import markdown
from services.transform.pathway.pipelines import PIPELINE_NAMES
from services.transform.pipelines import PIPELINES as PYTHON_PIPELINES
from services.transform.sql.pipelines import PIPELINES as SQL_PIPELINES
from shared.workflow.builtins import PathwayPipeline, SqlPipeline
from shared.workflow.kinds import STEP_KINDS
from shared.workflow.validate import schema_problems, validate_workflow

ROOT = Path(__file__).resolve().parents[2]


def step(step_id: str, uses: str, needs: list[str] | None = None, **with_: Any) -> dict[str, Any]:
    return {"id": step_id, "uses": uses, "needs": needs or [], "with": with_}


def problems_of(*steps: dict[str, Any]) -> dict[str, str]:
    result = validate_workflow({"name": "wf", "steps": list(steps)})
    assert not result.ok
    return {p.path: p.message for p in result.problems}


def test_the_issue_refusals_all_at_once_with_paths() -> None:
    found = problems_of(
        step("land", "store.put", key="k", layr="curated", data={}),
        step("fetch", "ingest.file", path="a.csv", fromat="csv"),
        step("note", "audit.log", message=5),
        step("tell", "notify.publish", subject="billing.done", data={}),
        step("read", "audit.log", ["fetch"], message="{{ steps.fetch.output.urii }}"),
        step("mine", "acme.double", n=2),
    )
    assert found["$.steps[0].with.layr"] == "unknown key 'layr' (did you mean 'layer'?)"
    assert found["$.steps[0].with"] == "store.put needs exactly one of 'layer' or 'bucket'"
    assert found["$.steps[1].with.fromat"] == "unknown key 'fromat' (did you mean 'format'?)"
    assert found["$.steps[2].with.message"] == "must be of type string, got 5"
    assert found["$.steps[3].with.subject"] == (
        'must be under notify.> or reports.>, got "billing.done"'
    )
    assert found["$.steps[4].with.message"] == (
        "{{ steps.fetch.output.urii }} reads output 'urii', which ingest.file does not declare "
        "(did you mean 'uri'?); it declares format, rows, uri"
    )
    unknown = found["$.steps[5].uses"]
    assert unknown.startswith("unknown step kind 'acme.double'; registered: audit.log, ")
    assert all(uses in unknown for uses in STEP_KINDS)
    assert len(found) == 7


def test_templates_stand_for_any_value_and_declared_outputs_pass() -> None:
    result = validate_workflow(
        {
            "name": "wf",
            "inputs": {"layer": {"default": "curated"}, "subject": {"default": "notify.x"}},
            "steps": [
                step("q", "ingest.postgres_query", source="s", sql="select 1", format="parquet"),
                step(
                    "put",
                    "store.put",
                    ["q"],
                    key="k/{{ steps.q.output.rows }}",
                    layer="{{ inputs.layer }}",
                    data={"columns": "{{ steps.q.output.columns }}"},
                ),
                step("tell", "notify.publish", ["put"], subject="{{ inputs.subject }}", data=1),
                step("sql", "transform.sql", ["put"], pipeline="medallion", inputs={"c": "x"}),
                step("log", "audit.log", ["sql"], message="{{ steps.sql.output.uris.gold }}"),
            ],
        }
    )
    assert result.problems == []


def test_wrong_values_inside_a_with_are_named() -> None:
    found = problems_of(
        step("s", "transform.sql", pipeline="medalion", inputs={}, params=[1]),
        step("h", "ingest.http_fetch", url="ftp://x", headers={"a": 1}),
    )
    assert found["$.steps[0].with.pipeline"] == (
        'must be one of "sales_report", "medallion", got "medalion"'
    )
    assert found["$.steps[0].with.params"] == "must be of type object, got [1]"
    assert found["$.steps[1].with.url"].startswith("'ftp://x' does not match")
    assert found["$.steps[1].with.headers.a"] == "must be of type string, got 1"


def test_every_example_fits_its_contract() -> None:
    for uses, kind in STEP_KINDS.items():
        assert kind.with_schema is not None, uses
        assert kind.output_schema is not None, uses
        assert schema_problems(kind.with_schema, dict(kind.example), "$") == [], uses
        assert kind.description.endswith("."), uses


def test_pipeline_names_match_the_transform_service() -> None:
    assert set(get_args(SqlPipeline)) == set(SQL_PIPELINES)
    assert set(get_args(PathwayPipeline)) == set(PIPELINE_NAMES) | set(PYTHON_PIPELINES)


def test_docs_steps_md_is_generated_from_the_contracts() -> None:
    page = (ROOT / "docs" / "steps.md").read_text()
    assert page == markdown(STEP_KINDS), "stale: run `choreo steps --markdown > docs/steps.md`"


def test_choreo_steps_lists_and_shows_kinds() -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["steps", "--json"])
    assert listed.exit_code == 0
    assert [k["uses"] for k in json.loads(listed.stdout)] == sorted(STEP_KINDS)
    shown = runner.invoke(app, ["steps", "notify.publish", "--json"])
    contract = json.loads(shown.stdout)
    assert contract["owner"] == "audit"
    assert contract["with"]["required"] == ["subject", "data"]
    assert set(contract["output"]["properties"]) == {"subject", "seq"}
    text = runner.invoke(app, ["steps", "store.put"]).stdout
    assert "exactly one of layer or bucket" in text
    assert "etag" in text
    missing = runner.invoke(app, ["steps", "stor.put"])
    assert missing.exit_code == 1
    assert "did you mean 'store.put'" in missing.stderr
