"""Where a stage's time goes: py-spy samples the service while it drains a backlog.

    python -m bench profile STAGE [--events 30000] [--top 25]

STAGE is one of ingest, store-lander, audit, fraud (bench/stages.py runs it, on servers
of its own). Prints the functions with the most samples on the stack (inclusive) and at the
top of it (self), as shares of the samples where the process was busy, and keeps the raw
collapsed stacks (for flamegraph tools) in a temporary directory it names. Needs py-spy in
this environment (`pip install py-spy`).
"""

import argparse
import secrets
import tempfile
from collections import Counter
from pathlib import Path

from bench.stages import STAGES, run_stage, shared_servers
from bench.transactions import envelopes
from shared.logs import configure_logging

# Leaves where a thread waits rather than works: the event loop in epoll (py-spy shows the
# native wait as the Python frame above it) and idle worker threads.
IDLE_LEAVES = ("Runner.run (asyncio/runners.py", "Condition.wait (threading.py")


def summarise(raw: Path, top: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(inclusive, self) shares of the busy samples per function, from py-spy's raw format
    (one `frame;frame;...;leaf count` line per distinct stack); waiting is left out."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    share = max(total, 1)
    return (
        [(f, n / share) for f, n in inclusive.most_common(top)],
        [(f, n / share) for f, n in own.most_common(top)],
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench profile")
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    directory = Path(tempfile.mkdtemp(prefix=f"choreo-profile-{args.stage}-"))
    stage = STAGES[args.stage]()
    with shared_servers() as servers:
        events = envelopes(args.events, f"profile-{secrets.token_hex(4)}-")
        figures = run_stage(servers, stage, events, profile=directory)
    print(f"{args.stage}: {figures['events_per_s']} events/s while sampled (py-spy slows it)")
    for raw in sorted(directory.glob("*.txt")):
        inclusive, own = summarise(raw, args.top)
        for title, rows in (("on the stack (inclusive)", inclusive), ("self", own)):
            print(f"\n{raw.name}: {title}")
            for frame, part in rows:
                print(f"  {part:6.1%}  {frame[:150]}")
    print(f"\nraw stacks: {directory}")
