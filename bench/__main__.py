"""`python -m bench NAME`: run one benchmark (see bench/README.md)."""

import sys

from bench import (
    console,
    event_to_audit,
    fraud_scoring,
    ingest,
    lander,
    pathway_sales,
    profile,
    sales_report,
    stages,
    suite,
    worker_steps,
    workflows,
)

BENCHMARKS = {
    "console": console.main,
    "event_to_audit": event_to_audit.main,
    "fraud_scoring": fraud_scoring.main,
    "ingest": ingest.main,
    "lander": lander.main,
    "pathway_streaming": pathway_sales.main,
    "profile": profile.main,
    "sales_report": sales_report.main,
    "stages": stages.main,
    "suite": suite.main,
    "worker_steps": worker_steps.main,
    "workflows": workflows.main,
}

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "event_to_audit"
    if name not in BENCHMARKS:
        sys.exit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    BENCHMARKS[name](sys.argv[2:])
