"""The benchmark suite's own correctness: its tiny mode runs every section end to end and
its JSON has every field the README explains. No figure is judged (timings never are in
tests); counts are, because a benchmark that lost events would measure the wrong thing.

It starts its own servers and embedded stack, like `choreo bench`, and leaves out the
`peer` section: the Prefect peer installs Prefect into a venv of its own and starts
Prefect's temporary server, neither of which is Choreo's to test (and both are slow and
flaky on a loaded machine). `choreo bench` runs it.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.streaming import OPS
from shared.access import AUDIT, STORE_LANDER, fraud_durable

ROOT = Path(__file__).resolve().parents[2]
LATENCY = {"events", "p50_ms", "p99_ms", "p99_9_ms"}
STAGE = {"events", "replicas", "seconds", "events_per_s", "service_cpu_s"}
STACK = {"nats", "s3", "postgres", "ingest", "store", "audit", "fraud"}

pytestmark = pytest.mark.integration
ONLY = [arg for section in ("stages", "streaming", "workflows") for arg in ("--only", section)]


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    """One tiny run of the whole suite, as the JSON it saved."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "suite", "--tiny", "--json", *ONLY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout[: done.stdout.rindex("}") + 1])
    saved = Path(done.stdout.rsplit("saved ", 1)[1].strip())
    assert json.loads(saved.read_text()) == document
    saved.unlink()
    figures: dict[str, Any] = document["figures"]
    return figures


def test_ceilings_and_stages(figures: dict[str, Any]) -> None:
    ceilings = figures["ceilings"]
    assert ceilings["c_hop"].keys() >= {"publish_per_s", "consume_per_s", "per_s"}
    assert ceilings["c_copy"]["per_s"] > 0
    assert ceilings["c_put"].keys() >= {"objects_per_s", "mb_per_s"}
    assert set(figures["stages"]) == {"ingest", "store-lander", "audit", "fraud"}
    for stage in figures["stages"].values():
        assert stage.keys() >= {*STAGE, "ratio_to_c_hop"}
        assert stage["events"] == 300
    assert "ratio_to_c_copy" in figures["stages"]["audit"]
    for service in ("audit", "fraud"):
        assert set(figures["scaling"][service]) == {"1", "2"}
        assert figures["scaling"][service]["2"]["replicas"] == 2


def test_streaming(figures: dict[str, Any]) -> None:
    streaming = figures["streaming"]
    assert streaming["max_sustainable_per_s"] > 0
    assert streaming["probes"]
    assert set(streaming["at"]) == {"50pct", "80pct", "1000_per_s"}
    for point in streaming["at"].values():
        assert point["acked"] == point["events"]
        assert point["drained"]
        for stop in ("audit_row", "lake_object", "fraud_scored"):
            assert point["latency"][stop].keys() == LATENCY
            assert point["latency"][stop]["events"] == point["events"], stop
            # From when each event was due: nothing is seen before it was sent.
            assert point["latency"][stop]["p50_ms"] >= 0, stop
        cpu_ms = point["cpu_ms_per_tx"]
        assert cpu_ms.keys() >= {*STACK, "loadgen", "bench", "stack"}
        in_stack = sum(v for k, v in cpu_ms.items() if k not in ("loadgen", "bench", "stack"))
        assert cpu_ms["stack"] == pytest.approx(in_stack, abs=0.01)
        ops = point["jetstream_ops_per_tx"]
        assert ops.keys() == {*OPS, "detail"}
        # Each transaction stored once in DATA, delivered to and acked by each consumer.
        assert ops["detail"]["stored.DATA"] == 1.0
        for consumer in (AUDIT, STORE_LANDER, fraud_durable(0, 1)):
            delivered = ops["detail"][f"delivered.DATA/{consumer}"]
            assert delivered >= 1.0, consumer
            assert ops["detail"][f"acked.DATA/{consumer}"] == delivered, consumer
        assert ops["nats_in_msgs"] > ops["stored"]
    cpu = streaming["cpu_percent_at_80pct"]
    assert cpu.keys() >= {*STACK, "loadgen", "bench"}


def test_workflows(figures: dict[str, Any]) -> None:
    workflows = figures["workflows"]
    assert workflows["runs_completed"] == workflows["concurrent_runs"]
    assert workflows.keys() >= {"step_overhead_p50_ms", "runs_per_s"}
    assert "sales_report" not in figures  # the peer is left out of the tests


def test_every_ratio_is_summarised(figures: dict[str, Any]) -> None:
    ratios = figures["ratios"]
    expected = {
        "ingest_to_c_hop",
        "store-lander_to_c_hop",
        "audit_to_c_hop",
        "fraud_to_c_hop",
        "audit_rows_to_c_copy",
        "audit_x2_to_x1",
        "fraud_x2_to_x1",
        "max_sustainable_tx_per_s",
        "fraud_scored_p99_ms_at_50pct",
        "fraud_scored_p99_ms_at_1000_per_s",
        "step_overhead_p50_ms",
        "runs_per_s_concurrent",
    }
    assert ratios.keys() >= expected
    for row in ratios.values():
        assert row.keys() == {"value", "goal", "met"}
