"""CPU work over many items on the event loop, handing the loop over now and then.

A service's event loop runs everything else it does: reading requests, answering them
(a 429 included), acks from NATS. A batch of thousands of events checked, encoded and
published in one go holds the loop as long (about 0.1 ms an event at ingest), and
everything else waits. A worker thread is no way out for work that is Python code: it
holds the GIL, and after each system call the loop's thread waits up to the interpreter's
switch interval (5 ms) to get it back. Under 10x overload ingest's 429s, each a few system
calls, took 150-250 ms at p99 with each 200-event batch checked in a thread, and 85-90 ms
with the same work done here, on the loop, in turns.
"""

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")

TURN = 200
"""Items handled before the loop runs its other work again (1-2 ms of an event's work)."""


async def taking_turns(items: Iterable[T], turn: int = TURN) -> AsyncIterator[T]:
    """Each of `items`, letting the event loop run other work after every `turn` of them."""
    for count, item in enumerate(items, 1):
        yield item
        if count % turn == 0:
            await asyncio.sleep(0)
