"""Starting, cancelling and retrying runs from a client (the CLI, tests, scripts)."""

from typing import Any

from nats.js import JetStreamContext

from shared.envelope import Event
from shared.ids import uuid7
from shared.workflow import events as ev

CLI_SOURCE = "choreo/cli"


async def _publish(js: JetStreamContext, event: Event) -> None:
    await js.publish(event.type, event.to_bytes(), headers=event.headers())


async def request_run(
    js: JetStreamContext,
    workflow: dict[str, Any],
    inputs: dict[str, Any],
    runid: str | None = None,
    version: int | None = None,
) -> str:
    """Publish `wf.run.requested`; the run id is chosen here so the caller can follow it.
    `version`: the deployed version of `workflow` it runs, recorded with the run."""
    runid = runid or uuid7()
    await _publish(
        js, ev.run_requested(workflow, inputs, runid, source=CLI_SOURCE, version=version)
    )
    return runid


async def request_cancel(js: JetStreamContext, runid: str, reason: str | None = None) -> None:
    await _publish(
        js, ev.run_command(ev.RUN_CANCEL_REQUESTED, runid, source=CLI_SOURCE, reason=reason)
    )


async def request_retry(js: JetStreamContext, runid: str) -> None:
    await _publish(js, ev.run_command(ev.RUN_RETRY_REQUESTED, runid, source=CLI_SOURCE))
