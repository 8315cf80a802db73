"""`choreo up` / `choreo down` as a user runs them: real processes, real ports."""

import asyncio
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from choreo.servers.process import alive
from shared.ids import uuid7
from shared.subjects import SERVICES
from tests.server_support import stack_s3
from tests.support import choreo, stack_env, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """A private (0700) data dir, as `mktemp -d` and root's home are: as root, PostgreSQL's
    own user cannot enter it, so its cluster is kept under /var/tmp; `down --purge` deletes
    both."""
    directory = Path(tempfile.mkdtemp(prefix="choreo-e2e-"))
    yield directory
    cluster = (directory / "postgres").resolve()
    purged = choreo("down", "--purge", "--json", data_dir=directory, check=False)
    assert json.loads(purged.stdout)["purged"] is True, purged.stderr
    assert not directory.exists()
    assert not cluster.exists()


@pytest.fixture(scope="module")
def stack(data_dir: Path) -> dict[str, Any]:
    result = choreo("up", "--json", data_dir=data_dir)
    info: dict[str, Any] = json.loads(result.stdout)
    return {**info, "env": stack_env(data_dir)}


def test_up_starts_every_part_ready(stack: dict[str, Any]) -> None:
    assert stack["running"] is True
    assert set(stack["parts"]) == {"nats", "s3", "postgres", *SERVICES, "console"}
    assert {p["status"] for p in stack["parts"].values()} == {"ready"}
    env = stack["env"]
    for service in SERVICES:
        response = httpx.get(f"{env[f'CHOREO_{service.upper()}_URL']}/readyz", timeout=5)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ready"
    for key in ("CHOREO_NATS_URL", "CHOREO_S3_ENDPOINT_URL", "CHOREO_DATABASE_URL"):
        assert env[key]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_a_private_data_dir_keeps_the_cluster_where_postgres_can_reach_it(
    stack: dict[str, Any], data_dir: Path
) -> None:
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    link = data_dir / "postgres"
    assert link.is_symlink()
    cluster = link.resolve()
    assert cluster.parent in (Path("/var/tmp"), Path("/tmp"))
    assert cluster.stat().st_uid == pwd.getpwnam("postgres").pw_uid
    assert (cluster / "PG_VERSION").exists()


def test_secrets_stay_out_of_the_state_file(stack: dict[str, Any], data_dir: Path) -> None:
    state = (data_dir / "stack.json").read_text()
    for key in ("CHOREO_NATS_PASSWORD", "CHOREO_S3_SECRET_KEY"):
        assert stack["env"][key] not in state
    assert (data_dir / "env").stat().st_mode & 0o777 == 0o600


def test_a_second_up_reuses_the_running_stack(stack: dict[str, Any], data_dir: Path) -> None:
    supervisor = json.loads((data_dir / "stack.json").read_text())["supervisor_pid"]
    result = choreo("up", data_dir=data_dir)
    assert "Reusing the stack" in result.stdout
    assert json.loads((data_dir / "stack.json").read_text())["supervisor_pid"] == supervisor
    pids = {name: part["pid"] for name, part in stack["parts"].items()}
    again = json.loads(choreo("up", "--json", data_dir=data_dir).stdout)
    assert {name: part["pid"] for name, part in again["parts"].items()} == pids


async def test_posted_event_reaches_the_audit_table(stack: dict[str, Any]) -> None:
    env = stack["env"]
    event_id = f"e2e-{uuid7()}"
    async with httpx.AsyncClient(base_url=env["CHOREO_INGEST_URL"]) as http:
        response = await http.post(
            "/v1/events",
            json={
                "type": "sale",
                "id": event_id,
                "data": {
                    "order_id": "o-9",
                    "day": "2024-01-15",
                    "region": "north",
                    "product": "widget",
                    "quantity": 1,
                    "unit_price": 9.5,
                },
            },
        )
    assert response.status_code == 202
    conn = await asyncpg.connect(env["CHOREO_DATABASE_URL"])
    try:
        rows = await wait_for(
            lambda: conn.fetchval("SELECT count(*) FROM events WHERE id = $1", event_id),
            lambda n: n == 1,
        )
    finally:
        await conn.close()
    assert rows == 1


def test_the_example_workflow_completes_and_stores_its_object(
    stack: dict[str, Any], data_dir: Path
) -> None:
    result = choreo(
        "run", str(ROOT / "workflows/minio-store/workflow.json"), "--json", data_dir=data_dir
    )
    run = json.loads(result.stdout)
    assert run["status"] == "completed", result.stdout
    assert set(run["steps"].values()) == {"completed"}
    assert (
        run["outputs"]["store-result"]["uri"]
        == "s3://curated/outputs/minio-store-sample/result.json"
    )
    env = stack["env"]

    async def fetch() -> dict[str, Any]:
        async with stack_s3(env) as s3:
            obj = await s3.get_object(
                Bucket="curated", Key="outputs/minio-store-sample/result.json"
            )
            body: dict[str, Any] = json.loads(await obj["Body"].read())
            return body

    result_object = asyncio.run(fetch())
    assert result_object["north"]["count"] == 2
    assert result_object["north"]["fields"]["revenue"]["sum"] == 47.5

    timeline = json.loads(choreo("events", run["runid"], "--json", data_dir=data_dir).stdout)
    types = [e["type"] for e in timeline]
    assert types[0] == "wf.run.requested"
    assert types[-1] == "wf.run.completed"
    # One causation chain: every event but the first was caused by an earlier one.
    ids = {e["id"] for e in timeline}
    assert all(e["causationid"] in ids for e in timeline[1:])
    assert [e["depth"] for e in timeline] == sorted(e["depth"] for e in timeline)


def test_sales_report_produces_the_report_and_the_notification(
    stack: dict[str, Any], data_dir: Path
) -> None:
    choreo("seed", "sales", "--days", "2", "--per-day", "50", data_dir=data_dir)
    workflow = ROOT / "workflows/sales-report/workflow.json"
    result = choreo("run", str(workflow), "--input", "date=2024-01-02", "--json", data_dir=data_dir)
    run = json.loads(result.stdout)
    assert run["status"] == "completed", result.stdout
    assert run["outputs"]["query-sales-data"]["rows"] == 50
    assert run["outputs"]["generate-report"]["engine"] == "pathway"
    uri = run["outputs"]["store-report"]["uri"]
    assert uri == "s3://curated/reports/sales/2024-01-02.json"
    report = json.loads(choreo("get", uri, data_dir=data_dir).stdout)
    total = [r for r in report["rows"] if r["day"] is None]
    assert len(total) == 1
    assert total[0]["orders"] == 50
    assert run["outputs"]["send-notification"]["subject"] == "reports.sales.daily"
    assert run["outputs"]["send-notification"]["seq"] >= 1


def test_fraud_detection_scores_the_sample_and_reports_alerts(
    stack: dict[str, Any], data_dir: Path
) -> None:
    workflow = ROOT / "workflows/fraud-detection/workflow.json"
    result = choreo("run", str(workflow), "--json", data_dir=data_dir)
    run = json.loads(result.stdout)
    assert run["status"] == "completed", result.stdout
    score = run["outputs"]["score"]
    labels = (ROOT / "workflows/fraud-detection/labels.ndjson").read_text().splitlines()
    assert score["scored"] == len(labels)
    assert score["alerts"] == score["decisions"]["review"] + score["decisions"]["block"] > 0
    report = json.loads(choreo("get", score["uri"], data_dir=data_dir).stdout)
    assert len(report["alerts"]) == score["alerts"]
    frauds = {json.loads(line)["transaction_id"] for line in labels if '"is_fraud": true' in line}
    caught = {a["transaction_id"] for a in report["alerts"]} & frauds
    assert len(caught) >= 0.6 * len(frauds), "the shipped model should catch most of them"


def test_an_invalid_workflow_exits_2_with_every_problem(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "name": "bad",
                "steps": [
                    {"id": "a", "uses": "audit.nope", "with": {}},
                    {"id": "b", "uses": "audit.log", "needs": ["ghost"], "with": {"message": "x"}},
                ],
            }
        )
    )
    result = choreo("run", str(bad), data_dir=data_dir, check=False)
    assert result.returncode == 2
    assert "$.steps[0].uses" in result.stderr
    assert "$.steps[1].needs[0]" in result.stderr


def test_a_killed_service_is_reported_and_restarted(stack: dict[str, Any], data_dir: Path) -> None:
    victim = stack["parts"]["fraud"]["pid"]
    os.kill(victim, 9)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        part = json.loads((data_dir / "stack.json").read_text())["parts"]["fraud"]
        if part["restarts"] >= 1 and part["ready"]:
            break
        time.sleep(0.2)
    assert part["crashes"], "the crash was not recorded"
    assert part["crashes"][-1]["returncode"] == -9
    result = choreo("up", data_dir=data_dir)
    assert "fraud crashed" in result.stderr
    # Shown once: later commands say only that earlier reports exist, behind --crashes.
    again = choreo("ps", data_dir=data_dir)
    assert "fraud crashed" not in again.stderr
    assert "1 earlier crash report: choreo ps --crashes" in again.stderr
    every = choreo("ps", "--crashes", "--json", data_dir=data_dir)
    reports = json.loads(every.stdout)["crashes"]
    assert [(r["part"], r["returncode"]) for r in reports] == [("fraud", -9)]
    assert json.loads(choreo("ps", "--json", data_dir=data_dir).stdout)["crashes"] == []
    assert "crashed" not in every.stderr  # --json: the reports are in the JSON only
    url = stack["env"]["CHOREO_FRAUD_URL"]
    ready = httpx.get(f"{url}/readyz", timeout=5)
    assert ready.status_code == 200


def test_a_stopped_part_stays_stopped_until_started(stack: dict[str, Any], data_dir: Path) -> None:
    def status() -> dict[str, Any]:
        part: dict[str, Any] = json.loads(choreo("ps", "--json", data_dir=data_dir).stdout)[
            "parts"
        ]["s3"]
        return part

    pid = stack["parts"]["s3"]["pid"]
    choreo("stop", "s3", data_dir=data_dir)
    assert not alive(pid)
    time.sleep(3)  # several supervisor checks: a crash would have been restarted by now
    stopped = status()
    assert stopped["status"] == "stopped"
    assert not stopped["crashes"]
    result = choreo("start", "s3", "--json", data_dir=data_dir)
    assert json.loads(result.stdout) == {"part": "s3", "status": "ready"}
    assert status()["pid"] != pid
    unknown = choreo("stop", "redis", data_dir=data_dir, check=False)
    assert unknown.returncode == 2
    assert "Unknown part 'redis'" in unknown.stderr


def test_no_output_and_no_log_line_carries_a_secret(stack: dict[str, Any], data_dir: Path) -> None:
    """Every password and key of the running stack, looked for in what each command prints
    (successes and failures) and in every log: only `choreo env --show-secrets` shows them."""
    creds = json.loads((data_dir / "credentials.json").read_text())
    secrets = {*creds["nats"].values(), *creds["postgres"].values()}
    secrets |= {value for key in creds["s3"].values() for value in key.values()}
    commands = [
        ["up", "--json"],
        ["ps"],
        ["ps", "--json", "--crashes"],
        ["env"],
        ["env", "--json"],
        ["runs"],
        ["runs", "--json"],
        ["audit", "--json"],
        ["ls"],
        ["ls", "-r", "s3://curated/"],
        ["status", "no-such-run"],
        ["get", "s3://curated/no-such-object"],
        ["fraud", "alerts", "--json"],
        ["run", str(ROOT / "workflows/minio-store/workflow.json"), "--json"],
    ]
    printed = {
        " ".join(args): (lambda r: r.stdout + r.stderr)(
            choreo(*args, data_dir=data_dir, check=False)
        )
        for args in commands
    }
    logs = {str(p): p.read_text(errors="replace") for p in (data_dir / "logs").rglob("*.log")}
    assert len(logs) >= len(stack["parts"])
    leaks = [
        (where, secret[:4] + "...")
        for where, text in {
            **printed,
            **logs,
            "stack.json": (data_dir / "stack.json").read_text(),
        }.items()
        for secret in secrets
        if secret in text
    ]
    assert leaks == []
    shown = choreo("env", "--show-secrets", data_dir=data_dir).stdout
    assert creds["nats"]["admin"] in shown
    assert creds["postgres"]["postgres"] in shown


def test_down_leaves_no_process_and_no_port(stack: dict[str, Any], data_dir: Path) -> None:
    state = json.loads((data_dir / "stack.json").read_text())
    pids = [state["supervisor_pid"], *(p["pid"] for p in state["parts"].values())]
    ports = [urlsplit(p["url"]).port for p in state["parts"].values()]
    result = choreo("down", data_dir=data_dir)
    assert "Stopped" in result.stdout
    for pid in pids:
        assert not alive(pid), f"process {pid} is still running"
    for port in ports:
        assert port is not None
        assert not _listening(port), f"port {port} is still open"
    assert not (data_dir / "stack.json").exists()
    assert "No stack is running" in choreo("down", data_dir=data_dir).stdout


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_dev_runs_in_the_foreground_and_ctrl_c_stops_everything() -> None:
    directory = Path(tempfile.mkdtemp(prefix="choreo-dev-"))
    directory.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
    dev = subprocess.Popen(
        [sys.executable, "-m", "choreo", "dev", "--data-dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 90
        state: dict[str, Any] = {}
        while time.monotonic() < deadline and state.get("status") != "ready":
            time.sleep(0.2)
            path = directory / "stack.json"
            state = json.loads(path.read_text()) if path.exists() else {}
        assert state.get("status") == "ready"
        pids = [p["pid"] for p in state["parts"].values()]
        dev.send_signal(2)  # what Ctrl-C sends
        output, _ = dev.communicate(timeout=60)
        assert dev.returncode == 0, output
        assert "Ctrl-C" in output  # the table and the hint were shown
        assert not any(alive(pid) for pid in pids)
    finally:
        if dev.poll() is None:
            dev.kill()
        shutil.rmtree(directory, ignore_errors=True)
