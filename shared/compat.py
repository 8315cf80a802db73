"""Workarounds for versions of our dependencies, each with the reason and how to drop it.

Nothing here runs on import: each is applied by an explicit call where it is needed."""

import builtins

from faststream.nats.subscriber.usecases import stream_pull_subscriber


def patch_faststream_fetch_timeout() -> None:
    """FastStream 0.7's pull loops catch `nats.errors.TimeoutError`, but nats-py 2.1x's
    `fetch()` can raise a plain `asyncio.TimeoutError` (when the deadline passes between
    its two pull requests). That escapes the loop, and a batch subscriber then drops the
    messages it had fetched so far: they come back only after `ack_wait` (30 s), which
    stalled the audit trail. Both are subclasses of the builtin TimeoutError in Python
    3.11+, so catching that is right. Drop this once FastStream catches it itself."""
    stream_pull_subscriber.TimeoutError = builtins.TimeoutError  # type: ignore[attr-defined,assignment]
