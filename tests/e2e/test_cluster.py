"""`choreo up --nats-cluster 3`: three nats-server nodes clustered on loopback, every
stream and bucket with three replicas, and Choreo working on it unchanged (the faults of
a cluster: tests/chaos/test_cluster.py)."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import choreo, own_data_dir, stack_env

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
NODES = {"nats-1", "nats-2", "nats-3"}


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    yield from own_data_dir("choreo-cluster-")


@pytest.fixture(scope="module")
def stack(data_dir: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(
        choreo("up", "--nats-cluster", "3", "--json", data_dir=data_dir).stdout
    )
    return {**info, "env": stack_env(data_dir)}


def ps(data_dir: Path) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(choreo("ps", "--json", data_dir=data_dir).stdout)
    return shown


def test_three_nodes_run_and_every_stream_has_three_replicas(
    stack: dict[str, Any], data_dir: Path
) -> None:
    parts = ps(data_dir)["parts"]
    assert set(parts) >= NODES
    assert "nats" not in parts
    for node in NODES:
        assert parts[node]["status"] == "ready"
        assert isinstance(parts[node]["pid"], int)
    streams = ps(data_dir)["streams"]
    assert {"DATA", "WORKFLOW", "FRAUD", "DLQ", "KV_choreo_runs"} <= set(streams)
    for name, stream in streams.items():
        assert stream["replicas"] == 3, name
        assert stream["leader"] in NODES, name
    env = stack["env"]
    assert env["CHOREO_STREAM_REPLICAS"] == "3"
    assert len(env["CHOREO_NATS_URL"].split(",")) == 3
    table = choreo("ps", data_dir=data_dir).stdout
    assert "Streams and their leaders: DATA nats-" in table


def test_a_workflow_runs_on_the_cluster(stack: dict[str, Any], data_dir: Path) -> None:
    workflow = ROOT / "workflows/minio-store/workflow.json"
    result = choreo("run", str(workflow), "--json", data_dir=data_dir, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(result.stdout)
    assert run["status"] == "completed", run
    assert set(run["steps"].values()) == {"completed"}


def test_no_secret_of_the_cluster_in_any_log_or_output(
    stack: dict[str, Any], data_dir: Path
) -> None:
    creds = json.loads((data_dir / "credentials.json").read_text())
    secrets = {creds["nats_routes"], *creds["nats"].values()}
    texts = [p.read_text(errors="replace") for p in (data_dir / "logs").glob("*.log")]
    texts += [
        choreo("ps", "--json", data_dir=data_dir).stdout,
        choreo("env", data_dir=data_dir).stdout,
    ]
    assert not [s[:4] for s in secrets for text in texts if s in text]
