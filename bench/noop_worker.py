"""The worker the worker-step benchmark runs: one step kind that does nothing."""

from typing import Any

from choreo.sdk import Context, Worker

worker = Worker("benchw")


@worker.step("benchw.noop")
async def noop(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Do nothing (the runtime's cost only)."""
    return {"ok": True}
