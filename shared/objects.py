"""`lake.object.written`: the event the store publishes for each object it writes to the
lake (the lake lander, the `store.put` and `store.promote` steps; `choreo put`), so
workflows can run on uploads and landed events (`"on": [{"object": "raw/files/**.csv"}]`,
shared/workflow/triggers.py).
"""

import hashlib
from typing import Any

from shared.envelope import Event
from shared.s3 import s3_uri
from shared.subjects import OBJECT_WRITTEN


def object_written(
    bucket: str, key: str, *, size: int | None, version: str, source: str, by: str
) -> Event:
    """The event of one write; `version` (an ETag or a digest of the content) makes its id,
    so announcing the same write twice is one event (JetStream de-duplication)."""
    digest = hashlib.sha256(f"{bucket}\0{key}\0{version}".encode()).hexdigest()[:32]
    data: dict[str, Any] = {
        "uri": s3_uri(bucket, key),
        "bucket": bucket,
        "key": key,
        "bytes": size,
        "version": version,
        "by": by,
    }
    return Event(id=f"obj-{digest}", type=OBJECT_WRITTEN, source=source, data=data)
