"""JetStream plumbing: idempotent stream provisioning and acknowledged event publishing."""

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import nats.errors
import structlog
from faststream.nats import NatsBroker
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from shared.envelope import MSG_ID_HEADER, Event
from shared.metrics import Metrics
from shared.settings import Settings
from shared.subjects import SCHEDULE_FIRES_KEPT, STREAMS, StreamSpec, stream_for
from shared.turns import taking_turns

log = structlog.get_logger(__name__)

# JetStream's error code for "stream name already in use with a different configuration".
STREAM_NAME_IN_USE = 10058


class SchedulesUnsupported(RuntimeError):
    """The nats-server does not fire scheduled messages (it is older than 2.14)."""


def stream_config(spec: StreamSpec, settings: Settings) -> StreamConfig:
    """The config Choreo wants for `spec`: file storage, de-duplication, retention."""
    config = StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        storage=StorageType.FILE,
        num_replicas=settings.stream_replicas,
        max_age=settings.stream_max_age_s,
        duplicate_window=settings.duplicate_window_s,
    )
    if spec.schedules:
        config.allow_msg_schedules = True
        config.max_age = 0  # a schedule must not expire
        config.max_msgs_per_subject = SCHEDULE_FIRES_KEPT
    return config


def _differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    fields = (
        "subjects",
        "storage",
        "num_replicas",
        "max_age",
        "duplicate_window",
        "description",
        "allow_msg_schedules",
        "max_msgs_per_subject",
    )
    return any(getattr(current, f) != getattr(wanted, f) for f in fields)


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create `config.name`, or bring it to `config`; safe when several services race."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            info = await js.add_stream(config)
            log.info("stream created", stream=config.name)
        except BadRequestError as exc:
            # Another service created it between our lookup and our create.
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            info = await js.stream_info(config.name)
    if _differs(info.config, config):
        info = await js.update_stream(config)
        log.info("stream updated", stream=config.name)
    if config.allow_msg_schedules and not info.config.allow_msg_schedules:
        # An older server ignores the field it does not know: say so, or no schedule fires.
        raise SchedulesUnsupported(
            f"nats-server does not support message schedules (stream {config.name} was "
            "not given allow_msg_schedules): Choreo's schedules need nats-server 2.14 or "
            "later; upgrade the server"
        )


async def ensure_streams(
    js: JetStreamContext, settings: Settings, specs: Iterable[StreamSpec] = STREAMS
) -> None:
    """Provision every stream Choreo uses (idempotent). A JetStream API call that times out
    or finds no JetStream (a cluster electing its leaders, a loaded machine) is tried again
    with the settings' backoff, up to `max_deliver` times."""
    for spec in specs:
        config = stream_config(spec, settings)
        for attempt in range(1, settings.max_deliver + 1):
            try:
                await ensure_stream(js, config)
                break
            except (nats.errors.TimeoutError, ServiceUnavailableError) as exc:
                if attempt == settings.max_deliver:
                    raise
                delay = settings.backoff(attempt)
                log.warning(
                    "JetStream did not answer; retrying",
                    stream=spec.name,
                    attempt=attempt,
                    delay_s=delay,
                    error=repr(exc),
                )
                await asyncio.sleep(delay)


def jetstream(broker: NatsBroker) -> JetStreamContext:
    """The JetStream context of a connected broker."""
    js: JetStreamContext = broker.config.connection_state.stream
    return js


@dataclass(frozen=True, slots=True)
class Encoded:
    """An event serialized already: where it goes, its id (JetStream's de-duplication id)
    and its bytes."""

    subject: str
    id: str
    payload: bytes


class EventPublisher:
    """Publishes events to JetStream and returns only once the stream has stored them.

    `publish` goes through the broker (not raw nats-py) so that `TestNatsBroker` sees
    publishes; `publish_all`, for a hot path, does not.
    """

    def __init__(self, broker: NatsBroker, metrics: Metrics, timeout: float = 5.0) -> None:
        self._broker = broker
        self._metrics = metrics
        self._timeout = timeout

    async def publish(self, subject: str, event: Event) -> PubAck | None:
        """Publish and wait for the stream's ack (`None` only under `TestNatsBroker`)."""
        ack = await self._broker.publish(
            event.to_bytes(),
            subject,
            headers=event.headers(),
            stream=stream_for(subject).name,
            timeout=self._timeout,
        )
        self._metrics.count_published(subject)
        return ack

    async def publish_many(self, items: Sequence[tuple[str, Event]]) -> list[PubAck]:
        """Publish every event at once (`publish_all`); raise the first reason one of them
        is not stored. Those that were are dropped as duplicates when the same events are
        published again: their ids are their de-duplication ids."""
        encoded = [Encoded(s, e.id, e.to_bytes()) async for s, e in taking_turns(items)]
        outcomes = await self.publish_all(encoded)
        acks = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            acks.append(outcome)
        return acks

    async def publish_all(self, messages: Sequence[Encoded]) -> list[PubAck | BaseException]:
        """Publish every message at once (pipelined on the broker's connection, with raw
        nats-py), then wait for the stream's acks together, up to the timeout: for each
        message its ack, or why it is not stored (an error of JetStream's or of the
        connection, TimeoutError when no ack came). The headers are those of `publish`:
        the de-duplication id and the stream expected to store it. The publishing takes
        turns with the loop's other work (`shared.turns`)."""
        js = jetstream(self._broker)
        sent: list[asyncio.Future[PubAck] | BaseException] = []
        async for message in taking_turns(messages):
            headers = {MSG_ID_HEADER: message.id}
            stream = stream_for(message.subject).name
            try:
                sent.append(
                    await js.publish_async(
                        message.subject, message.payload, stream=stream, headers=headers
                    )
                )
            except Exception as exc:  # the connection refused it: not sent
                sent.append(exc)
        futures = [f for f in sent if isinstance(f, asyncio.Future)]
        if futures:
            _, late = await asyncio.wait(futures, timeout=self._timeout)
            for future in late:
                future.cancel()
        results: list[PubAck | BaseException] = []
        for message, outcome in zip(messages, sent, strict=True):
            if isinstance(outcome, BaseException):
                results.append(outcome)
            elif outcome.cancelled():
                results.append(TimeoutError(f"no ack from JetStream within {self._timeout} s"))
            elif (error := outcome.exception()) is not None:
                results.append(error)
            else:
                results.append(outcome.result())
                self._metrics.count_published(message.subject)
        return results
