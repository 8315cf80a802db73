"""Deployed workflows on a real nats-server: versions in KV, `choreo deploy`, `workflows`,
`run NAME[@VERSION]`, `undeploy`."""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

# Importing the command modules registers their commands.
from shared.ids import uuid7
from shared.settings import Settings
from shared.workflow.deployments import DeploymentError, Deployments, open_bucket
from tests.support import CliInThread, printed_json
from tests.workflow_support import wait_run_ended, workflow_services

pytestmark = pytest.mark.integration


def workflow(name: str, message: str) -> dict[str, Any]:
    return {
        "name": name,
        "inputs": {"who": {"type": "string", "default": "world"}},
        "steps": [{"id": "say", "uses": "audit.log", "with": {"message": message}}],
    }


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Deployments]:
    """The deployments bucket on the session's nats-server."""
    client = await nats.connect(settings.nats_url)
    try:
        yield Deployments(await open_bucket(client.jetstream(), settings))
    finally:
        await client.close()


async def test_a_changed_document_is_a_new_version_an_unchanged_one_is_not(
    store: Deployments,
) -> None:
    name = f"wf-{uuid7()[-12:]}"
    first, new1 = await store.deploy(name, workflow(name, "one"))
    # Same content, other key order: not a new version.
    reordered = dict(reversed(list(workflow(name, "one").items())))
    same, new2 = await store.deploy(name, reordered)
    second, new3 = await store.deploy(name, workflow(name, "two"))

    assert (first.version, new1) == (1, True)
    assert (same.version, new2) == (1, False)
    assert (second.version, new3) == (2, True)
    assert (await store.resolve(name)).workflow == workflow(name, "two")
    assert (await store.resolve(f"{name}@1")).workflow == workflow(name, "one")
    assert name in [d.name for d in await store.latest_all()]
    versions = await store.versions(name)
    assert [(d.version, d.workflow) for d in versions] == [
        (1, workflow(name, "one")),
        (2, workflow(name, "two")),
    ]
    with pytest.raises(DeploymentError, match="no version 7: the latest is 2"):
        await store.resolve(f"{name}@7")
    with pytest.raises(ValueError, match="NAME or NAME@VERSION"):
        await store.resolve("Not A Name")

    assert await store.undeploy(name) == 2
    assert await store.undeploy(name) == 0
    with pytest.raises(DeploymentError, match="is deployed"):
        await store.resolve(name)
    assert name not in [d.name for d in await store.latest_all()]
    assert await store.versions(name) == []
    # Numbers are never reused: a recorded NAME@1 keeps meaning what it ran.
    again, _ = await store.deploy(name, workflow(name, "three"))
    assert again.version == 3


async def test_deploy_list_run_by_name_and_version_undeploy(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    name = f"wf-{uuid7()[-12:]}"
    path = tmp_path / "workflow.json"
    cli = CliInThread(tmp_path, CHOREO_NATS_URL=settings.nats_url)

    path.write_text(json.dumps(workflow(name, "v1 says hello {{ inputs.who }}")))
    deployed1 = await cli("deploy", str(path), "--json")
    unchanged = await cli("deploy", str(path))
    path.write_text(json.dumps(workflow(name, "v2 says hello {{ inputs.who }}")))
    deployed2 = await cli("deploy", str(path), "--json")
    listed = await cli("workflows", "--json")
    table = await cli("workflows")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": name, "steps": [{"id": "x", "uses": "nope.kind"}]}))
    invalid = await cli("deploy", str(bad))

    assert deployed1.exit_code == 0, deployed1.output
    assert json.loads(deployed1.output) == {"name": name, "version": 1, "new": True}
    assert unchanged.exit_code == 0
    assert "unchanged" in unchanged.output
    assert json.loads(deployed2.output) == {"name": name, "version": 2, "new": True}
    ours = [d for d in json.loads(listed.output) if d["name"] == name]
    assert [(d["version"], d["steps"]) for d in ours] == [(2, 1)]
    assert name in table.output
    assert invalid.exit_code == 2
    assert "steps[0].uses" in invalid.output

    async with workflow_services(settings, transform=False):
        latest = await cli("run", name, "-i", "who=ci", "--json")
        pinned = await cli("run", f"{name}@1", "--json")
        missing = await cli("run", f"{name}@9")
        for result in (latest, pinned):
            assert result.exit_code == 0, result.output
        runs = [printed_json(r.output)["runid"] for r in (latest, pinned)]
        for runid in runs:
            assert (await wait_run_ended(db, runid))["status"] == "completed"
    messages = [
        await db.fetchval("SELECT message FROM audit_log WHERE id = $1", f"{r}:say") for r in runs
    ]
    assert messages == ["v2 says hello ci", "v1 says hello world"]
    versions = [
        await db.fetchval(
            "SELECT data->>'version' FROM events WHERE type = 'wf.run.requested' AND runid = $1",
            runid,
        )
        for runid in runs
    ]
    assert versions == ["2", "1"]
    assert missing.exit_code == 2
    assert "no version 9: the latest is 2" in missing.output

    removed = await cli("undeploy", name)
    again = await cli("undeploy", name)
    assert removed.exit_code == 0
    assert "2 versions" in removed.output
    assert again.exit_code == 1
    assert "No workflow named" in again.output
