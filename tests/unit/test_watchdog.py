"""The event-loop watchdog (shared/watchdog.py) on a clock of our own, and what `choreo ps`
makes of a part the supervisor found unresponsive."""

import os
from pathlib import Path

import pytest

from choreo.stackctl import health
from choreo.state import PartState, StackState
from shared.settings import Settings
from shared.watchdog import TICK_S, LoopWatchdog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_that_ticks_on_time_is_healthy() -> None:
    clock = Clock()
    watchdog = LoopWatchdog(2.0, clock)
    for _ in range(20):
        clock.now += TICK_S + 0.01
        watchdog.tick()
        assert watchdog.problem() is None


def test_a_loop_blocked_now_is_reported() -> None:
    clock = Clock()
    watchdog = LoopWatchdog(2.0, clock)
    clock.now += TICK_S + 1.9
    assert watchdog.problem() is None, "within the bound"
    clock.now += 0.2
    assert watchdog.problem() == "event loop blocked for 2.1 s (bound 2 s)"


def test_a_block_that_just_ended_is_reported_for_one_bound() -> None:
    clock = Clock()
    watchdog = LoopWatchdog(2.0, clock)
    clock.now += TICK_S + 7.0
    watchdog.tick()  # the tick after a 7 s block, before /healthz was answered
    clock.now += 0.5
    assert watchdog.problem() == ("event loop was blocked for 7.0 s until 0.5 s ago (bound 2 s)")
    clock.now += 1.6
    watchdog.tick()
    assert watchdog.problem() is None


def test_test_hooks_are_refused_in_prod() -> None:
    with pytest.raises(ValueError, match="CHOREO_TEST_HOOKS is refused in prod"):
        Settings(environment="prod", test_hooks=True)


def test_ps_shows_a_part_failing_its_liveness_probes_as_unresponsive(tmp_path: Path) -> None:
    live = PartState("s3", "server", os.getpid(), "http://127.0.0.1:1", "s3.log", 15)
    hung = PartState("nats", "server", os.getpid(), "nats://127.0.0.1:1", "n.log", 15)
    hung.unresponsive = True
    state = StackState(os.getpid(), str(tmp_path), parts={"s3": live, "nats": hung})
    assert {h.part.name: h.status for h in health(state)} == {
        "s3": "ready",
        "nats": "unresponsive",
    }
