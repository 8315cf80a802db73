"""Reading one subject of a JetStream stream in stream order, from a recorded position."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress

import nats
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from shared.ids import uuid7

log = structlog.get_logger(__name__)

FETCH_WAIT_S = 0.25
RECONNECT_DELAY_S = 1.0
CONSUMER_INACTIVE_S = 60.0


class StreamReader:
    """Reads one subject of a JetStream stream in stream order, from a given sequence.

    An ephemeral pull consumer without acks: the reader's position is `next_seq`, which the
    caller records (here in Pathway's snapshot). Messages must arrive in order: a gap in
    the consumer sequence (a pull whose answer was lost) or a vanished consumer (a server
    restart) makes the reader start a new consumer at `next_seq`, so nothing is skipped.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        next_seq: int | None = None,
        *,
        batch: int = 1000,
    ) -> None:
        self._js = js
        self._stream = stream
        self._subject = subject
        self._batch = batch
        self.next_seq = next_seq
        """The stream sequence to read next; None: from the start of the stream."""
        self.pending = 0
        """Messages of the subject after the last one read."""

    async def batches(self) -> AsyncIterator[list[Msg]]:
        """Batches of messages, in order, forever (as soon as any are available)."""
        while True:
            try:
                name, subscription = await self._open()
            except (APIError, nats.errors.Error, TimeoutError) as exc:
                log.warning("no consumer; retrying", subject=self._subject, error=repr(exc))
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            try:
                async for batch in self._read(subscription):
                    yield batch
            except (APIError, nats.errors.Error) as exc:
                log.warning("consumer lost; reopening", subject=self._subject, error=repr(exc))
                await asyncio.sleep(RECONNECT_DELAY_S)
            finally:
                await self._close(name, subscription)

    async def _open(self) -> tuple[str, JetStreamContext.PullSubscription]:
        start = (
            {"deliver_policy": DeliverPolicy.ALL}
            if self.next_seq is None
            else {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": self.next_seq}
        )
        config = ConsumerConfig(
            name=f"transform-{self._subject.replace('.', '-')}-{uuid7()}",
            filter_subject=self._subject,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=CONSUMER_INACTIVE_S,
            mem_storage=True,
            **start,
        )
        assert config.name is not None
        await self._js.add_consumer(self._stream, config)
        return config.name, await self._js.pull_subscribe_bind(config.name, self._stream)

    async def _read(
        self, subscription: JetStreamContext.PullSubscription
    ) -> AsyncIterator[list[Msg]]:
        expected = 1  # the consumer sequence of the next message
        while True:
            try:
                messages = await subscription.fetch(self._batch, timeout=FETCH_WAIT_S)
            except TimeoutError:
                continue
            in_order: list[Msg] = []
            for msg in messages:
                if msg.metadata.sequence.consumer != expected:
                    break
                expected += 1
                in_order.append(msg)
            if in_order:
                last = in_order[-1].metadata
                self.next_seq = last.sequence.stream + 1
                self.pending = last.num_pending
                yield in_order
            if len(in_order) < len(messages):
                log.warning("gap in delivery; reopening", subject=self._subject, at=self.next_seq)
                return

    async def _close(self, name: str, subscription: JetStreamContext.PullSubscription) -> None:
        with suppress(Exception):  # best effort: the server deletes it when inactive anyway
            await subscription.unsubscribe()
            await self._js.delete_consumer(self._stream, name)
