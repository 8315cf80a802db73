"""In-process fraud scoring rate: transactions/s through one `Scorer` on one core.

Generates transactions with `choreo generate`'s generator (not timed), then times
`Scorer.score` over all of them in timestamp order: parsing, window features, the four
rules and the model, and the state update, as the fraud service runs them per transaction.
Per-transaction times give the p50/p99 of one call.

    python -m bench fraud_scoring [--n 200000] [--seed 1]
"""

import argparse
import os
import time
from typing import Any

from bench.results import percentile, save
from choreo.generate import generate
from services.fraud.domain import Scorer


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench fraud_scoring")
    parser.add_argument("--n", type=int, default=200_000, help="transactions to score")
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as promised
    transactions, _ = generate(args.n, args.seed)
    scorer = Scorer()
    calls: list[float] = []
    started = time.perf_counter()
    for tx in transactions:
        before = time.perf_counter()
        scorer.score(tx)
        calls.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - started
    figures: dict[str, Any] = {
        "transactions": args.n,
        "seed": args.seed,
        "model": scorer.model.version,
        "seconds": round(elapsed, 3),
        "tx_per_s": round(args.n / elapsed),
        "call_p50_us": round(percentile(calls, 50) * 1e6, 1),
        "call_p99_us": round(percentile(calls, 99) * 1e6, 1),
        "cards": len(scorer.state.cards),
        "terminals": len(scorer.state.terminals),
    }
    for name, value in figures.items():
        print(f"{name}: {value}")
    print(f"saved {save('fraud_scoring', figures)}")
