"""Time-ordered unique ids (UUIDv7, RFC 9562) for events and runs.

Python 3.11's `uuid` module has no `uuid7`; ids sort by creation time, which keeps
B-tree inserts in the audit tables local and makes `ORDER BY id` a rough timeline.
"""

import os
import time
import uuid


def uuid7(now_ms: int | None = None) -> str:
    """A UUIDv7 string: 48 bits of Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a: 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & (2**62 - 1)  # rand_b: 62 bits
    return str(uuid.UUID(int=value))
