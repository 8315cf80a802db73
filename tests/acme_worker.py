"""A worker as a user writes one (`choreo worker tests.acme_worker:worker`), for the tests.

Each step appends to the file CHOREO_TEST_EFFECTS: `start <key> <pid>` when an attempt
starts, `done <key>` for its effect, so a test sees which process ran what, and how often.
"""

import asyncio
import os
from typing import Any

from pydantic import BaseModel, ConfigDict

from choreo.sdk import Context, Worker

worker = Worker("acme")


def _note(line: str) -> None:
    with open(os.environ["CHOREO_TEST_EFFECTS"], "a", encoding="utf-8") as effects:
        effects.write(line + "\n")


class DoubleWith(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int
    sleep_s: float = 0.0


class DoubleOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int


@worker.step("acme.double", example={"n": 21})
async def double(ctx: Context, params: DoubleWith) -> DoubleOutput:
    """Double n (after sleeping sleep_s)."""
    _note(f"start {ctx.idempotency_key} {os.getpid()}")
    ctx.progress("sleeping", 0.0)
    await asyncio.sleep(params.sleep_s)
    _note(f"done {ctx.idempotency_key}")
    return DoubleOutput(n=params.n * 2)


@worker.step("acme.sum")
async def total(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Add up values."""
    ctx.log.info("adding", values=params["values"])
    result = sum(params["values"])
    assert ctx.lake is not None
    uri = await ctx.lake.write(f"runs/{ctx.runid}/{ctx.step}/total.txt", str(result).encode())
    return {"total": result, "uri": uri, "read_back": (await ctx.lake.read(uri)).decode()}
