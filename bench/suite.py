"""The benchmark suite: every figure of bench/README.md in one run, as ratios.

    python -m bench suite [--quick | --tiny] [--soak] [--only SECTION ...] [--json]
    choreo bench [--quick] [--soak] [--json]

Sections (each measured with what bounds or compares with it, in the same run):
- `stages`: ceilings (C_hop, C_copy, C_put), each service alone against them, and the
  scaling runs (1, 2, 4 replicas of fraud and audit) -- bench/stages.py;
- `streaming`: open-loop load through the embedded stack: max sustainable rate, latencies
  at 50% and 80% of it and at 1,000 tx/s, CPU per process, CPU and JetStream operations per
  transaction, `--soak` RSS -- bench/streaming.py;
- `workflows`: per-step overhead and runs/s (bench/workflows.py), on the same stack as
  `streaming`;
- `peer`: `sales-report` next to its Prefect peer (bench/peer.py), on the same stack.

`--quick` finishes in a few minutes with short windows and small sizes; `--tiny` is the
test's mode (tests/integration/test_bench_suite.py): every field, figures meaningless. The
test leaves out `peer`: the peer installs Prefect into a venv of its own and starts
Prefect's temporary server, neither of which is Choreo's to test.
The JSON goes to bench/results/suite-<UTC time>.json (see bench/README.md for its fields).
"""

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import peer, streaming, workflows
from bench.results import save
from bench.stages import run_stages
from choreo.client import ClientSettings
from shared.logs import configure_logging

SECTIONS = ("stages", "streaming", "workflows", "peer")
ON_THE_STACK = ("streaming", "workflows", "peer")
SOAK_S = 600.0
FRAUD_P99_GOAL_MS = 50.0
# The goals of the streaming-throughput work (bench/README.md, "The second pass").
CPU_PER_TX_GOAL_MS = 0.8  # the stack's CPU per transaction at 80% of the max
STEP_OVERHEAD_GOAL_MS = 4.0
SALES_REPORT_GOAL = 1.0  # Choreo's wall over Prefect's


@dataclass(frozen=True)
class Sizes:
    stage_events: int
    put_objects: int
    replicas: tuple[int, ...]
    window_s: float
    bisections: int
    max_rate: int
    chain: int
    chains: int
    concurrent_runs: int
    peer_repeat: int
    peer_rows_per_day: int


MODES = {
    "full": Sizes(50_000, 128, (1, 2, 4), 60.0, 2, streaming.MAX_RATE, 20, 5, 100, 5, 10_000),
    "quick": Sizes(5_000, 32, (1, 2, 4), 6.0, 1, streaming.MAX_RATE, 10, 2, 20, 2, 1_000),
    "tiny": Sizes(300, 4, (1, 2), 2.0, 0, 500, 3, 1, 3, 1, 50),
}


def run_suite(
    mode: str, *, soak: bool = False, sections: tuple[str, ...] = SECTIONS
) -> dict[str, Any]:
    """Run the chosen sections; the figures, with `ratios` summarising them."""
    sizes = MODES[mode]
    figures: dict[str, Any] = {
        "mode": mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "stages" in sections:
        figures.update(run_stages(sizes.stage_events, sizes.put_objects, sizes.replicas, _log))
    if set(ON_THE_STACK) & set(sections):
        with streaming.embedded_stack(_log) as (stack, scratch):
            settings = ClientSettings.load(stack.root)
            if "streaming" in sections:
                bench = streaming.StreamingBench(stack, scratch, _log)
                figures["streaming"] = asyncio.run(
                    streaming.measure(
                        bench,
                        sizes.window_s,
                        sizes.bisections,
                        max_rate=sizes.max_rate,
                        soak_s=SOAK_S if soak else None,
                    )
                )
            if "workflows" in sections:
                _log("workflows: no-op chains and concurrent runs")
                figures["workflows"] = asyncio.run(
                    workflows.run(sizes.chain, sizes.chains, sizes.concurrent_runs, settings)
                )
            if "peer" in sections:
                _log("sales-report: Choreo and the Prefect peer")
                figures["sales_report"] = peer.compare(
                    settings,
                    scratch,
                    repeat=sizes.peer_repeat,
                    per_day=sizes.peer_rows_per_day,
                    chains=sizes.chains,
                    chain_length=sizes.chain,
                )
    figures["ratios"] = ratios(figures)
    return figures


def ratios(figures: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: each a value, its goal when the issue sets one, and whether met."""
    out: dict[str, Any] = {}

    def add(
        name: str, value: float | None, goal: str | None = None, met: bool | None = None
    ) -> None:
        out[name] = {"value": value, "goal": goal, "met": met}

    for stage, data in figures.get("stages", {}).items():
        add(f"{stage}_to_c_hop", data["ratio_to_c_hop"], ">= 0.5", data["ratio_to_c_hop"] >= 0.5)
        if "ratio_to_c_copy" in data:
            value = data["ratio_to_c_copy"]
            add("audit_rows_to_c_copy", value, ">= 0.7", value >= 0.7)
    for service, runs in figures.get("scaling", {}).items():
        one = runs["1"]["events_per_s"]
        for replicas, data in runs.items():
            if replicas != "1":
                add(f"{service}_x{replicas}_to_x1", round(data["events_per_s"] / one, 3))
    if "streaming" in figures:
        s = figures["streaming"]
        add("max_sustainable_tx_per_s", s["max_sustainable_per_s"])
        for point, data in s["at"].items():
            p99 = data["latency"]["fraud_scored"]["p99_ms"]
            met = p99 is not None and p99 < FRAUD_P99_GOAL_MS and data["sustainable"]
            add(f"fraud_scored_p99_ms_at_{point}", p99, f"< {FRAUD_P99_GOAL_MS:.0f}", met)
            for stop in ("audit_row", "lake_object"):
                add(f"{stop}_p99_ms_at_{point}", data["latency"][stop]["p99_ms"])
        if "80pct" in s["at"]:
            cpu = s["at"]["80pct"]["cpu_ms_per_tx"].get("stack")
            met = cpu is not None and cpu <= CPU_PER_TX_GOAL_MS
            add("stack_cpu_ms_per_tx_at_80pct", cpu, f"<= {CPU_PER_TX_GOAL_MS}", met)
    if "workflows" in figures:
        w = figures["workflows"]
        p50 = round(w["step_overhead_p50_ms"], 1)
        add(
            "step_overhead_p50_ms",
            p50,
            f"<= {STEP_OVERHEAD_GOAL_MS:.0f}",
            p50 <= STEP_OVERHEAD_GOAL_MS,
        )
        add("runs_per_s_concurrent", round(w["runs_per_s"], 1))
    if "sales_report" in figures:
        r = figures["sales_report"]
        wall = r["wall_ratio_choreo_to_prefect"]
        add(
            "sales_report_choreo_to_prefect_wall",
            wall,
            f"<= {SALES_REPORT_GOAL}",
            wall <= SALES_REPORT_GOAL,
        )
        add("choreo_overhead_per_step_ms", r["choreo"]["overhead_per_step_ms"])
        add("prefect_overhead_per_task_ms", r["prefect"]["overhead_per_task_ms"])
        add("prefect_noop_task_ms", r["prefect"]["noop_task_ms"])
    return out


def print_ratios(figures: dict[str, Any]) -> None:
    print(f"\n{'figure':<40} {'value':>12}  {'goal':<8} met")
    for name, row in figures["ratios"].items():
        value = "n/a" if row["value"] is None else f"{row['value']:,}"
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        print(f"{name:<40} {value:>12}  {row['goal'] or '':<8} {met}")


def print_per_transaction(figures: dict[str, Any]) -> None:
    """Per transaction at each streaming point: CPU ms of each process (and the stack's
    sum), and JetStream operations."""
    points = figures.get("streaming", {}).get("at", {})
    if not points:
        return
    header = "".join(f"{point:>12}" for point in points)
    for title, key, rows in (
        ("CPU ms per transaction", "cpu_ms_per_tx", None),
        ("JetStream operations per transaction", "jetstream_ops_per_tx", streaming.OPS),
    ):
        names = rows or list(dict.fromkeys(n for p in points.values() for n in p[key]))
        print(f"\n{title:<40}{header}")
        for name in names:
            cells = "".join(f"{_cell(p[key].get(name)):>12}" for p in points.values())
            print(f"{name:<40}{cells}")


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.3f}"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench suite")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short windows, small sizes")
    size.add_argument("--tiny", action="store_true", help="the test's sizes (figures meaningless)")
    parser.add_argument("--soak", action="store_true", help=f"add a {SOAK_S:.0f} s soak")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these")
    parser.add_argument("--json", action="store_true", help="print the JSON document")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    figures = run_suite(mode, soak=args.soak, sections=tuple(args.only or SECTIONS))
    path = save("suite", figures)
    if args.json:
        print(json.dumps(json.loads(Path(path).read_text()), indent=2))
    else:
        print_ratios(figures)
        print_per_transaction(figures)
    print(f"saved {path}")
