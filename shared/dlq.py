"""Dead letters you can operate: list, read, replay and purge what services gave up on.

A dead letter is a `dlq.message` event on `dlq.<service>` in the stream DLQ (written by
`shared.consumer.Settler.dead_letter`): the reason, the original subject, its stream
position, the deliveries, the original body and headers. Its id here is its DLQ stream
sequence number.

Replaying publishes the original body to its original subject with its original headers,
except `Nats-Msg-Id`, which becomes `<original>:replay:<dlq seq>`: JetStream still holds the
original id in its de-duplication window for a while and would drop the replay, and the
new id makes a repeated replay of the same dead letter a duplicate. The envelope inside
(its event id) is unchanged, so consumers that de-duplicate by event id still see one
event. A replayed dead letter is recorded in the KV bucket `choreo_dlq`
(`replayed.<seq>`) and not replayed again unless forced.
"""

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from shared.kv import dump, get_entry, open_bucket
from shared.settings import Settings
from shared.subjects import DLQ, DLQ_STATE_BUCKET, dlq_subject


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    service: str
    time: datetime
    reason: str
    subject: str
    stream: str
    stream_seq: int
    deliveries: int | None
    payload: bytes
    headers: dict[str, str]
    replayed_at: datetime | None = None

    def summary(self) -> dict[str, Any]:
        """What `choreo dlq list` shows, JSON-ready."""
        return {
            "id": self.seq,
            "service": self.service,
            "time": self.time.isoformat(),
            "subject": self.subject,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
        }

    def detail(self) -> dict[str, Any]:
        """Everything, the original body as text when it is UTF-8 (else base64)."""
        try:
            body, encoding = self.payload.decode(), "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(self.payload).decode(), "base64"
        return {
            **self.summary(),
            "stream": self.stream,
            "stream_seq": self.stream_seq,
            "headers": self.headers,
            "payload": body,
            "payload_encoding": encoding,
        }


def parse(seq: int, data: bytes) -> DeadLetter:
    """A dead letter from its DLQ message (a `dlq.message` event)."""
    event = json.loads(data)
    body = event.get("data") or {}
    raw = str(body.get("payload", ""))
    payload = base64.b64decode(raw) if body.get("payload_encoding") == "base64" else raw.encode()
    source = str(event.get("source", ""))
    return DeadLetter(
        seq=seq,
        service=source.removeprefix("choreo/"),
        time=datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")),
        reason=str(body.get("reason", "")),
        subject=str(body.get("subject", "")),
        stream=str(body.get("stream", "")),
        stream_seq=int(body.get("stream_seq") or 0),
        deliveries=body.get("deliveries"),
        payload=payload,
        headers={str(k): str(v) for k, v in (body.get("headers") or {}).items()},
    )


async def open_state(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The bucket that remembers which dead letters were replayed, and when."""
    return await open_bucket(
        js, settings, DLQ_STATE_BUCKET, "dead letters replayed (replayed.<DLQ seq>)"
    )


class DeadLetters:
    """Read, replay and purge the DLQ stream."""

    def __init__(self, js: JetStreamContext, state: KeyValue) -> None:
        self.js = js
        self.state = state

    async def list(
        self, service: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[DeadLetter]:
        """Dead letters, oldest first: of one service, since a time, at most `limit`."""
        subject = dlq_subject(service) if service else "dlq.>"
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
            opt_start_time=since.astimezone(UTC) if since else None,
        )
        sub = await self.js.pull_subscribe(subject, stream=DLQ.name, config=config)
        found: list[DeadLetter] = []
        try:
            while len(found) < limit:
                try:
                    batch = await sub.fetch(min(500, limit - len(found)), timeout=0.5)
                except (NatsTimeout, TimeoutError):
                    break
                for msg in batch:
                    found.append(
                        await self._with_state(parse(msg.metadata.sequence.stream, msg.data))
                    )
                if batch and batch[-1].metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return found

    async def get(self, seq: int) -> DeadLetter | None:
        try:
            message = await self.js.get_msg(DLQ.name, seq)
        except NotFoundError:
            return None
        if message.data is None:
            return None
        return await self._with_state(parse(seq, message.data))

    async def replay(self, letter: DeadLetter, *, force: bool = False) -> bool:
        """Publish the original again; False when it was replayed before (and not forced)."""
        if letter.replayed_at is not None and not force:
            return False
        headers = dict(letter.headers)
        original = headers.get("Nats-Msg-Id")
        if original:
            headers["Nats-Msg-Id"] = f"{original}:replay:{letter.seq}"
        await self.js.publish(letter.subject, letter.payload, headers=headers or None)
        await self.state.put(f"replayed.{letter.seq}", dump({"at": datetime.now(UTC).isoformat()}))
        return True

    async def purge_older_than(self, age: timedelta, now: datetime) -> int:
        """Delete the dead letters older than `age`; how many went."""
        cutoff = now - age
        info = await self.js.stream_info(DLQ.name)
        before = info.state.messages
        newer = await self.list(since=cutoff, limit=1)
        keep_from = newer[0].seq if newer else info.state.last_seq + 1
        await self.js.purge_stream(DLQ.name, seq=keep_from)
        after = (await self.js.stream_info(DLQ.name)).state.messages
        return before - after

    async def _with_state(self, letter: DeadLetter) -> DeadLetter:
        entry = await get_entry(self.state, f"replayed.{letter.seq}")
        if entry is None:
            return letter
        at = datetime.fromisoformat(json.loads(entry[0])["at"])
        return DeadLetter(**{**letter.__dict__, "replayed_at": at})
