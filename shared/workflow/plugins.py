"""HTTP plugins: step kinds served by an HTTP endpoint, in any language.

`choreo plugin register KIND --url URL` stores the kind in the step registry with
`origin: plugin`; its steps are routed to the ingest service, which POSTs, once per attempt,

    {"runid": ..., "step": ..., "attempt": n, "params": <the rendered with>}

with an `Idempotency-Key: <run>:<step>` header (the same for every attempt). A 2xx JSON
object is the step's output (checked against the plugin's output schema, when it declared
one); a 4xx fails the step at once with the body's `message` (or `error`, or the text); a
5xx, a connection error or a timeout fails the attempt, retried by the step's retry policy.
"""

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from shared.workflow.kinds import StepKind
from shared.workflow.steps import StepContext, StepFailed, StepFunction, StepOutput
from shared.workflow.validate import schema_problems

PLUGIN_OWNER = "ingest"
"""The service that calls HTTP plugins."""
DEFAULT_TIMEOUT_S = 30.0


class PluginUnavailable(Exception):
    """A 5xx answer: the attempt fails and is retried by the step's policy."""


def plugin_step(kind_of: Callable[[str], Awaitable[StepKind | None]]) -> StepFunction:
    """The step function of every HTTP plugin kind (looked up by `kind_of` when it runs)."""

    async def call(ctx: StepContext) -> StepOutput:
        kind = await kind_of(ctx.uses)
        if kind is None or kind.origin != "plugin" or not kind.url:
            raise StepFailed(f"{ctx.uses!r} is not a registered HTTP plugin")
        timeout = httpx.Timeout(kind.timeout_s or DEFAULT_TIMEOUT_S)
        body = {"runid": ctx.runid, "step": ctx.step, "attempt": ctx.attempt, "params": ctx.params}
        async with httpx.AsyncClient(timeout=timeout) as client:
            answer = await client.post(
                kind.url, json=body, headers={"Idempotency-Key": ctx.idempotency_key}
            )
        said = _message(answer)
        if answer.status_code >= 500:
            raise PluginUnavailable(f"{kind.url} answered {answer.status_code}: {said}")
        if answer.status_code >= 400:
            raise StepFailed(f"{ctx.uses} refused the step ({answer.status_code}): {said}")
        try:
            output = answer.json()
        except ValueError:
            output = None
        if not isinstance(output, dict):
            raise StepFailed(
                f"{ctx.uses} answered {answer.status_code} without a JSON object: {said}"
            )
        if kind.output_schema is not None:
            wrong = schema_problems(kind.output_schema, output, "output", ctx.uses)
            if wrong:
                problems = "; ".join(str(p) for p in wrong)
                raise StepFailed(f"{ctx.uses} answered an output its schema refuses: {problems}")
        if isinstance(output.get("message"), str):
            ctx.log.info(output["message"], plugin=kind.url)
        return output

    return call


def _message(answer: httpx.Response) -> str:
    """What the plugin said: the body's `message` or `error`, else its text (shortened)."""
    try:
        body: Any = answer.json()
    except ValueError:
        return answer.text[:500]
    if isinstance(body, dict):
        for field in ("message", "error"):
            if isinstance(body.get(field), str):
                return str(body[field])
    return answer.text[:500]
