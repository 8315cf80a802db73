"""Starting, cancelling and retrying runs from a client (the CLI, tests, scripts)."""

import asyncio
import json
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from shared.envelope import Event
from shared.ids import uuid7
from shared.workflow import events as ev

CLI_SOURCE = "choreo/cli"


# Pauses before the 2nd, 3rd... attempt of a publish JetStream did not acknowledge.
PUBLISH_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0)


async def _publish(js: JetStreamContext, event: Event) -> None:
    """Publish until JetStream acknowledges; the same event id again is de-duplicated.

    On a cluster under load, a publish sometimes gets a timeout, no responders, or an empty
    answer (nats-py then fails to decode it) while a stream's leader changes: each is
    tried again with backoff."""
    for delay in (*PUBLISH_BACKOFF_S, None):
        try:
            await js.publish(event.type, event.to_bytes(), headers=event.headers())
            return
        except (nats.errors.TimeoutError, NoStreamResponseError, json.JSONDecodeError):
            if delay is None:
                raise
            await asyncio.sleep(delay)


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
