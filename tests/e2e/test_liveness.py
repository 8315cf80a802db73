"""The supervisor's liveness probes on a real embedded stack: a part that hangs (SIGSTOP)
and a service whose event loop is blocked (the test hook) are reported `unresponsive`,
killed and restarted with the crash backoff."""

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from choreo.servers.process import alive
from tests.support import choreo, own_data_dir

pytestmark = pytest.mark.e2e

INTERVAL_S, TIMEOUT_S, FAILURES = 1, 1, 3
LIVENESS = {
    "CHOREO_LIVENESS_INTERVAL_S": str(INTERVAL_S),
    "CHOREO_LIVENESS_TIMEOUT_S": str(TIMEOUT_S),
    "CHOREO_LIVENESS_FAILURES": str(FAILURES),
    "CHOREO_TEST_HOOKS": "1",
}
# Detection (FAILURES probes, each up to INTERVAL_S + TIMEOUT_S apart), the first restart's
# backoff (1 s), then the service's start-up, which takes seconds to a minute on a loaded
# machine.
RESTART_BOUND_S = FAILURES * (INTERVAL_S + TIMEOUT_S) + 1 + 60


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    yield from own_data_dir("choreo-liveness-")


@pytest.fixture(scope="module")
def stack(data_dir: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(
        choreo("up", "--json", data_dir=data_dir, env=LIVENESS).stdout
    )
    return info


def part(data_dir: Path, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(choreo("ps", "--json", data_dir=data_dir).stdout)["parts"][
        name
    ]
    return found


def restarted(data_dir: Path, name: str, old_pid: int) -> tuple[list[str], float]:
    """Watch the supervisor's state file (fast: `choreo ps` itself waits for a hung part's
    answers) until `name` runs under another pid, then `choreo ps` until it is ready: what
    the supervisor said of it meanwhile, and the seconds it took."""
    started = time.monotonic()
    seen: list[str] = []
    while time.monotonic() - started < RESTART_BOUND_S + 30:
        state = json.loads((data_dir / "stack.json").read_text())["parts"][name]
        now = "unresponsive" if state["unresponsive"] else f"pid {state['pid']}"
        if not seen or seen[-1] != now:
            seen.append(now)
        if state["pid"] not in (old_pid, None) and part(data_dir, name)["status"] == "ready":
            return seen, time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{name} not restarted; the supervisor said: {seen}")


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP the process (it hangs: alive, silent) for the block; kill it after the block
    if the supervisor did not, so that no stopped process is left behind."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def last_crash(data_dir: Path, name: str) -> dict[str, Any]:
    state = json.loads((data_dir / "stack.json").read_text())
    crash: dict[str, Any] = state["parts"][name]["crashes"][-1]
    return crash


def test_a_stopped_service_is_reported_unresponsive_then_restarted(
    stack: dict[str, Any], data_dir: Path
) -> None:
    pid = part(data_dir, "store")["pid"]
    with stopped(pid):
        seen, took = restarted(data_dir, "store", pid)
    print(f"store SIGSTOPped: {' -> '.join(seen)}, ready again after {took:.1f} s")
    assert "unresponsive" in seen
    assert not alive(pid)
    assert took < RESTART_BOUND_S
    crash = last_crash(data_dir, "store")
    assert crash["returncode"] == -signal.SIGKILL
    assert crash["reason"].startswith(f"was unresponsive ({FAILURES} liveness probes failed")
    assert part(data_dir, "store")["restarts"] == 1
    shown = choreo("ps", "--crashes", data_dir=data_dir).stderr
    assert "store was unresponsive" in shown


def test_a_service_whose_event_loop_is_blocked_is_restarted(
    stack: dict[str, Any], data_dir: Path
) -> None:
    url = stack["env"]["CHOREO_AUDIT_URL"]
    pid = part(data_dir, "audit")["pid"]
    answer = httpx.post(f"{url}/testing/block-loop", params={"seconds": 3600}, timeout=10)
    assert answer.status_code == 202, answer.text
    seen, took = restarted(data_dir, "audit", pid)
    print(f"audit's loop blocked: {' -> '.join(seen)}, ready again after {took:.1f} s")
    assert "unresponsive" in seen
    assert not alive(pid)
    assert took < RESTART_BOUND_S
    assert last_crash(data_dir, "audit")["reason"].startswith("was unresponsive")
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_a_hung_server_is_restarted_too(stack: dict[str, Any], data_dir: Path) -> None:
    pid = part(data_dir, "s3")["pid"]
    with stopped(pid):
        seen, took = restarted(data_dir, "s3", pid)
    print(f"s3 SIGSTOPped: {' -> '.join(seen)}, ready again after {took:.1f} s")
    assert "unresponsive" in seen
    assert took < RESTART_BOUND_S
    assert last_crash(data_dir, "s3")["reason"].startswith("was unresponsive")
