"""The scorer's state on disk: snapshots in a JetStream object store, and the stream replay
that brings a snapshot up to date.

A snapshot holds the scorer's `State` (with what the labels taught), `applied_seq` (the last
stream sequence of `data.transaction` or `data.fraud_label` applied to it) and the outcomes
of the transactions scored but not yet acknowledged, for one partition (`state-p<i>-of-<P>`
in bucket `choreo_fraud`). An object store rather than a KV value because the state
outgrows NATS' max_payload (1 MiB): objects are chunked.

The format is JSON, versioned, and exact: floats are written with `repr`, which
round-trips every float, and the non-finite ones JSON lacks as the strings "inf"/"-inf".
The state's dataclasses are encoded field by field and decoded from their type hints, so a
field added to `services.fraud.windows` with a default is carried without changes here, and
a snapshot written before it existed loads with the default.
"""

import asyncio
import gc
import json
import math
import os
import signal
import time
import types
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectStoreConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    NotFoundError,
    ObjectNotFoundError,
    ServiceUnavailableError,
)
from nats.js.object_store import ObjectStore

from services.fraud.windows import State
from shared.ids import uuid7
from shared.settings import Settings
from shared.subjects import FRAUD_STATE_BUCKET

log = structlog.get_logger(__name__)

FORMAT = "choreo.fraud.snapshot"
VERSION = 1
REPLAY_BATCH = 1_000
REPLAY_WAIT_S = 2.0
REPLAY_STALL_S = 60.0
ENCODE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Verdict:
    """What `fraud.scored` says about a transaction, kept until its delivery is acked."""

    score: float
    decision: str
    reasons: list[str]
    rules: dict[str, float]
    model: str
    shadow: "Verdict | None" = None  # the shadow model's, when one runs


@dataclass(frozen=True)
class Outcome:
    """A transaction's verdict, or (verdict None) why it cannot be scored."""

    verdict: Verdict | None
    error: str | None = None


@dataclass
class Snapshot:
    partition: int
    partitions: int
    applied_seq: int
    state: State
    pending: dict[int, Outcome]
    """Outcomes of the deliveries not yet acknowledged, by stream sequence."""


class SnapshotError(ValueError):
    """A snapshot this code cannot load."""


def object_name(partition: int, partitions: int) -> str:
    return f"state-p{partition}-of-{partitions}"


def encode(snapshot: Snapshot) -> bytes:
    doc = {"format": FORMAT, "version": VERSION, **_to_json(snapshot)}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


async def encode_detached(snapshot: Snapshot, timeout_s: float = ENCODE_TIMEOUT_S) -> bytes:
    """`encode(snapshot)` in a forked child process.

    The fork is a copy-on-write image of the state at this instant, so the event loop goes
    on scoring (and changing the state) while the child encodes: only the fork itself, a
    few milliseconds, pauses it. Encoding in the loop instead stalled scoring for about
    0.35 s per 100,000 transactions of state, every snapshot (the p99 of bench/streaming).
    """
    if not hasattr(os, "fork"):
        return encode(snapshot)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: encode, write, leave without any cleanup of the parent's
        os.close(read_fd)
        code = 1
        try:
            # Signals are the parent's business: none may reach its event loop from here.
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            gc.disable()  # nothing to collect in a process that lives a second
            data = encode(snapshot)
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        return await asyncio.wait_for(asyncio.to_thread(_collect, read_fd, pid), timeout_s)
    except TimeoutError:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # its pipe closes, which ends the reading thread
        raise SnapshotError(f"encoding the snapshot took over {timeout_s:g} s") from None


def _collect(read_fd: int, pid: int) -> bytes:
    """What the encoding child wrote, once it exited successfully."""
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SnapshotError(f"the snapshot's encoding process failed (status {status})")
    return data


def decode(raw: bytes, partition: int, partitions: int) -> Snapshot:
    """The snapshot in `raw`, which must be of this partition (SnapshotError if not)."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise SnapshotError(f"snapshot: not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotError(f"snapshot: format is not {FORMAT!r}")
    if doc.get("version") != VERSION:
        raise SnapshotError(f"snapshot: version {doc.get('version')!r}, this code reads {VERSION}")
    if (doc.get("partition"), doc.get("partitions")) != (partition, partitions):
        raise SnapshotError(
            f"snapshot: of partition {doc.get('partition')!r} of {doc.get('partitions')!r}, "
            f"not {partition} of {partitions}"
        )
    try:
        snapshot: Snapshot = _from_json(Snapshot, doc)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot: does not fit the state's fields ({exc!r})") from exc
    return snapshot


def _to_json(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(_to_json(v) for v in value)  # sorted: the same state, the same bytes
    if isinstance(value, list | tuple | deque):
        return [_to_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "inf", "-inf", "nan": float() reads them back
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"no snapshot encoding for {type(value).__name__}")


def _from_json(hint: Any, raw: Any, factory: Callable[[], Any] | None = None) -> Any:
    """Rebuild a value of type `hint`; `factory` is the field's default factory (it tells a
    deque's maxlen, which the type does not)."""
    origin, args = get_origin(hint), get_args(hint)
    if isinstance(hint, type) and is_dataclass(hint):
        hints = get_type_hints(hint)
        values = {
            f.name: _from_json(
                hints[f.name],
                raw[f.name],
                None if f.default_factory is MISSING else f.default_factory,
            )
            for f in fields(hint)
            if f.init and f.name in raw  # absent: a field newer than the snapshot
        }
        return hint(**values)
    if origin in (Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # only `X | None` is used
        return _from_json(inner, raw)
    if origin is dict:
        key, item = args
        return {_from_json(key, k): _from_json(item, v) for k, v in raw.items()}
    if origin is deque:
        maxlen = factory().maxlen if factory is not None else None
        return deque((_from_json(args[0], v) for v in raw), maxlen=maxlen)
    if origin in (set, frozenset, list):
        return origin(_from_json(args[0], v) for v in raw)
    if origin is tuple:
        return tuple(_from_json(a, v) for a, v in zip(args, raw, strict=True))
    if origin is Literal:
        if raw not in args:
            raise ValueError(f"{raw!r} is not one of {args}")
        return raw
    if hint in (float, int, str, bool):
        return hint(raw)
    if hint is Any:
        return raw
    raise TypeError(f"no snapshot decoding for {hint!r}")


class SnapshotStore:
    """One partition's snapshot object in the `choreo_fraud` bucket."""

    def __init__(self, store: ObjectStore, name: str) -> None:
        self._store = store
        self.name = name

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings, name: str) -> "SnapshotStore":
        """Open the bucket, creating it when missing (identical configs: a race is harmless)."""
        try:
            store = await js.object_store(FRAUD_STATE_BUCKET)
        except BucketNotFoundError:
            store = await js.create_object_store(
                FRAUD_STATE_BUCKET,
                ObjectStoreConfig(
                    description="fraud scorer state snapshots, one object per partition",
                    storage=StorageType.FILE,
                    replicas=settings.stream_replicas,
                ),
            )
        return cls(store, name)

    async def load(self) -> bytes | None:
        try:
            result = await self._store.get(self.name)
        except ObjectNotFoundError:
            return None
        return result.data

    async def save(self, data: bytes) -> None:
        await self._store.put(self.name, data)


async def read_range(
    js: JetStreamContext, stream: str, subjects: list[str], first: int, last: int
) -> AsyncIterator[Msg]:
    """The messages of `subjects` with stream sequence in [first, last], in order, from an
    ephemeral consumer without acks (it never moves the durable consumer).

    The consumer reads the store of one replica, which may be behind the stream's leader
    (a node catching up, or whose disk is full) or slow to answer on a loaded machine:
    running out of messages there (a fetch that times out, or nothing left pending) ends
    the read only once the leader has no message of `subjects` left up to `last`. A read
    that stopped short would leave the replay short, and the deliveries it missed would
    come back with no verdict. ReplayStalled if the replica delivers nothing for
    REPLAY_STALL_S while the leader holds more."""
    if last < first:
        return
    config = ConsumerConfig(
        name=f"fraud-replay-{uuid7()}",
        filter_subjects=subjects,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=first,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=60.0,
        mem_storage=True,
    )
    assert config.name is not None
    await js.add_consumer(stream, config)
    subscription = await js.pull_subscribe_bind(config.name, stream)
    after = first  # the first sequence not read yet
    progressed = time.monotonic()
    try:
        while True:
            try:
                batch = await subscription.fetch(REPLAY_BATCH, timeout=REPLAY_WAIT_S)
            except TimeoutError:
                batch = []
            for msg in batch:
                seq = msg.metadata.sequence.stream
                if seq > last:
                    return
                yield msg
                if seq == last:
                    return
                after, progressed = seq + 1, time.monotonic()
            if batch and batch[-1].metadata.num_pending > 0:
                continue
            with suppress(TimeoutError, ServiceUnavailableError):  # the leader busy: again
                if not await _held(js, stream, subjects, after, last):
                    return  # the rest was removed (the stream's max_age), or never existed
            if time.monotonic() - progressed > REPLAY_STALL_S:
                raise ReplayStalled(
                    f"{stream}: no message read after sequence {after - 1} for "
                    f"{REPLAY_STALL_S:.0f} s, while the stream holds more up to {last}"
                )
    finally:
        await subscription.unsubscribe()
        await js.delete_consumer(stream, config.name)


class ReplayStalled(RuntimeError):
    """The replica read for a replay stopped delivering before its end (see read_range)."""


async def _held(
    js: JetStreamContext, stream: str, subjects: list[str], first: int, last: int
) -> bool:
    """Whether the stream's leader holds a message of `subjects` in [first, last]."""
    for subject in subjects:
        with suppress(NotFoundError):
            found = await js.get_msg(stream, seq=first, subject=subject, next=True)
            if found.seq is not None and found.seq <= last:
                return True
    return False
