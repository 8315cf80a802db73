"""Saving benchmark figures: one JSON file per run under bench/results/."""

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def save(name: str, figures: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"{name}-{stamp}.json"
    document = {
        "benchmark": name,
        "at": stamp,
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "figures": figures,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _cpus() -> int:
    return len(os.sched_getaffinity(0))
