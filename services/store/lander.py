"""The lake lander's pure logic: which events go into which object, under which key, and
when a buffer is due. No I/O and no clock (callers pass `now`); the I/O is in `lake.py`.

The lander consumes stream `DATA` (durable `store-lander`) and writes gzip'd JSONL objects,
one envelope per line, to the raw bucket under

    events/<type>/date=<YYYY-MM-DD>/<first-seq:012d>-<last-seq:012d>.jsonl.gz

grouped by event type and the UTC date of the event's `time`; `first-seq`/`last-seq` are the
stream sequences of the object's first and last event (zero-padded, so keys sort by them).
A batch is acknowledged only after its objects are written.

Exactly once across objects
---------------------------
JetStream delivers at least once. A lander that dies after writing an object and before
acknowledging its events gets them again, and nothing about the redelivery (which messages
come back together, in which order, mixed with which new ones) is guaranteed: acks that
reached the server before the crash are not redelivered, expired messages come back as
their timers fire, a nak'd message comes back after later ones. So the lander does not rely
on batches being reproducible; it relies on one invariant of the objects it writes:

  (I) An object of group g named `<a>-<b>` holds events of g with stream sequences from a
      (its first) to b (its last), and every event of g with a sequence in a..b is in
      some object.

It holds because an object is cut from a *run*: a range of consecutive stream sequences that
are all in the batch being written (`runs()`). Each event of g in the run is either in the
object, or was found already landed (so, by induction, it is in an earlier object).
tests/unit/test_lander.py checks the whole argument against random schedules of crashes,
partial acks and redeliveries.

With (I), "has the message with sequence s of group g landed?" is answered by the keys
alone: yes exactly when a key of g covers s (`covered()`). The lander asks only for
redelivered messages (delivery count other than 1): a first delivery cannot have been
written by anyone, since no lander had it before. (The consumer re-created from its ack
floor, shared/pull.py, hands what an earlier consumer of the name may have delivered with
a count of 0.) A run never spans
`MAX_OBJECT_SPAN` sequences or more, so an object covering s starts after
s - MAX_OBJECT_SPAN and one bounded listing of the group's keys answers it
(`listing_start()`). Then:

- at most once: a redelivered message found landed is acknowledged without being written;
  one not found is written. Nothing is overwritten: a new object's first event had not
  landed, so no existing key of its group starts with that sequence. Nothing is deleted,
  so an acknowledged event cannot disappear (deleting the "stale" object of a crashed
  batch would lose the events of it that were acknowledged before the crash);
- at least once: a message is acknowledged only after it is in an object (written now, or
  found covered).

A copy of a message delivered twice into one buffer (its ack_wait expired while it waited)
is written once: a batch is de-duplicated by stream sequence first.

One lander at a time
--------------------
The "not found, so write it" step is safe only if no one else writes the same message at
the same time. In one process, flushes are serialised. Across processes, a message is in
two landers' hands at once only when a delivery outlives ack_wait: JetStream hands it to
another lander while the first still writes it, and both may write. Buffering is shorter
than ack_wait by configuration (`StoreSettings` refuses otherwise), and the lander warns
when a flush outlives it. (A lander that dies mid-write is not such a case: a PUT already
sent may still complete on the server after the kill, as seen here in the SIGKILL test, but
within milliseconds, long before ack_wait ends and the message is redelivered; then it is
found.)

We chose to warn rather than refuse a second lander: nothing on the consumer tells reliably
that another process pulls from it, and a second lander is correct whenever its flushes
are quicker than ack_wait (the two interleave, so objects get smaller). The supported setup
is one: run the lander in one store replica (`CHOREO_LANDER_ENABLED=false` on the others,
which keep running steps and presigning URLs), replaced with `Recreate`
(k8s/base/services/store.yaml).

Also assumed: the `events/` prefix of the raw bucket belongs to the lander (an object
someone else puts there under a key of this shape would be taken as landed events), and the
consumer is not deleted by hand over a stream already landed (a new one counts deliveries
from 1, so the stream would land again; the lander's own re-creation from the ack floor
keeps the mark of what was delivered before).
"""

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import orjson

from shared.envelope import Envelope
from shared.lake import SEQ_DIGITS, Group, group_of, object_key
from shared.pull import Pulled

# An object spans fewer stream sequences than this (last - first < MAX_OBJECT_SPAN), so the
# keys that may cover a sequence s all start after s - MAX_OBJECT_SPAN.
MAX_OBJECT_SPAN = 100_000


def listing_start(group: Group, lowest: int) -> str:
    """S3 `StartAfter` for listing every key of `group` that may cover sequences >= `lowest`."""
    return f"{group.prefix}{max(lowest - MAX_OBJECT_SPAN, 0):0{SEQ_DIGITS}d}"


def covered(seqs: Iterable[int], ranges: Collection[tuple[int, int]]) -> set[int]:
    """The sequences that fall in one of the (first, last) ranges."""
    return {s for s in seqs if any(first <= s <= last for first, last in ranges)}


def runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Ranges of consecutive sequences, each spanning fewer than MAX_OBJECT_SPAN of them."""
    found: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if found and seq == found[-1][1] + 1 and seq - found[-1][0] < MAX_OBJECT_SPAN:
            found[-1] = (found[-1][0], seq)
        else:
            found.append((seq, seq))
    return found


def delivery_group(pulled: Pulled) -> Group:
    """The group of a delivered event."""
    return group_of(pulled.envelope["type"], pulled.envelope["time"])


def unique(batch: Iterable[Pulled]) -> list[Pulled]:
    """The batch in stream order, one delivery per sequence (the most delivered one)."""
    by_seq: dict[int, Pulled] = {}
    for received in batch:
        seen = by_seq.get(received.stream_seq)
        if seen is None or received.deliveries > seen.deliveries:
            by_seq[received.stream_seq] = received
    return [by_seq[seq] for seq in sorted(by_seq)]


def to_check(batch: Iterable[Pulled]) -> dict[Group, set[int]]:
    """Per group, the sequences that may have landed already: those delivered before.

    A delivery count of 1 means no lander ever had the message; anything else (including
    0: maybe delivered before, by a consumer of the name since re-created) is checked
    against the lake's keys.
    """
    found: dict[Group, set[int]] = {}
    for pulled in batch:
        if pulled.deliveries != 1:
            found.setdefault(delivery_group(pulled), set()).add(pulled.stream_seq)
    return found


@dataclass(frozen=True)
class LakeObject:
    """One object to write: events of one group from one run, in stream order."""

    group: Group
    seqs: tuple[int, ...]
    envelopes: tuple[Envelope, ...]

    @property
    def first(self) -> int:
        return self.seqs[0]

    @property
    def last(self) -> int:
        return self.seqs[-1]

    @property
    def key(self) -> str:
        return object_key(self.group, self.first, self.last)

    def jsonl(self) -> bytes:
        """The events as JSON Lines: each envelope on one line, as `Event.to_bytes()`
        writes it (compact, a UTC time with `Z`)."""
        return b"".join(orjson.dumps(e, option=orjson.OPT_UTC_Z) + b"\n" for e in self.envelopes)


def plan(batch: Sequence[Pulled], landed: Collection[int]) -> list[LakeObject]:
    """The objects that land `batch`: per run of consecutive sequences, one object per group
    holding the group's events of that run that have not `landed` yet."""
    ordered = unique(batch)
    by_seq = {r.stream_seq: r for r in ordered}
    objects: list[LakeObject] = []
    for low, high in runs(by_seq):
        members: dict[Group, list[Pulled]] = {}
        for seq in range(low, high + 1):
            if seq not in landed:
                pulled = by_seq[seq]
                members.setdefault(delivery_group(pulled), []).append(pulled)
        for found in sorted(members):
            items = members[found]
            objects.append(
                LakeObject(
                    found,
                    tuple(p.stream_seq for p in items),
                    tuple(p.envelope for p in items),
                )
            )
    return objects


@dataclass(frozen=True)
class FlushPolicy:
    """When a buffer is written: at `max_events`, at `max_bytes`, or at `max_age_s`."""

    max_events: int
    max_bytes: int
    max_age_s: float

    def before_adding(self, count: int, size: int, nbytes: int) -> str | None:
        """Why the buffer must be written before it takes a message of `nbytes`, or None.

        A lone message always fits, however large: it is written on its own."""
        if count == 0:
            return None
        if count + 1 > self.max_events:
            return "count"
        if size + nbytes > self.max_bytes:
            return "bytes"
        return None

    def due(self, count: int, size: int, oldest: float | None, now: float) -> str | None:
        """Why the buffer must be written now, or None."""
        if count == 0:
            return None
        if count >= self.max_events:
            return "count"
        if size >= self.max_bytes:
            return "bytes"
        if oldest is not None and now - oldest >= self.max_age_s:
            return "age"
        return None


T = TypeVar("T")


@dataclass
class Buffer(Generic[T]):
    """Messages waiting to be written, their total size and when the oldest arrived."""

    items: list[T] = field(default_factory=list)
    size: int = 0
    oldest: float | None = None

    def add(self, item: T, nbytes: int, now: float) -> None:
        self.items.append(item)
        self.size += nbytes
        if self.oldest is None:
            self.oldest = now

    def take(self) -> list[T]:
        items = self.items
        self.items, self.size, self.oldest = [], 0, None
        return items

    def due(self, policy: FlushPolicy, now: float) -> str | None:
        return policy.due(len(self.items), self.size, self.oldest, now)

    def full_for(self, policy: FlushPolicy, nbytes: int) -> str | None:
        return policy.before_adding(len(self.items), self.size, nbytes)
