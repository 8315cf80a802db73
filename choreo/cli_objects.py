"""Object commands: `choreo get URI [-o FILE]` downloads an object from the lake.

It reads S3 directly with the admin credentials of `<data dir>/env` (or `CHOREO_S3_*`),
streaming in chunks, so objects larger than memory download fine.
"""

import asyncio
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, BinaryIO

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from choreo.cli_common import DataDir, Json, app, console, errors
from choreo.client import ClientSettings

EXIT_BAD_URI = 2
CHUNK_BYTES = 1024 * 1024
# Smaller downloads finish before a progress bar would be worth drawing.
PROGRESS_MIN_BYTES = 8 * CHUNK_BYTES
# What S3 servers answer for a missing key or bucket.
MISSING = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


@dataclass(frozen=True)
class Downloaded:
    bytes: int
    sha256: str
    content_type: str


class DownloadError(Exception):
    """The object could not be fetched; the message says why and what to do."""


@app.command()
def get(
    uri: Annotated[str, typer.Argument(metavar="URI", help="The object: s3://bucket/key.")],
    data_dir: DataDir,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="Write to FILE (default: stdout)."),
    ] = None,
    json_out: Json = False,
) -> None:
    """Download an object (e.g. a step's output `uri`) to FILE or to stdout.

    Exit code: 0 downloaded, 1 missing object or S3 unreachable, 2 bad URI or options.
    """
    from shared.s3 import parse_s3_uri  # aioboto3 loads only for this command

    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as exc:
        errors.print(f"[red]{exc}[/red] (expected s3://bucket/key)")
        raise typer.Exit(EXIT_BAD_URI) from exc
    if json_out and output is None:
        errors.print("--json describes the file written: give -o FILE too.")
        raise typer.Exit(EXIT_BAD_URI)
    settings = ClientSettings.load(data_dir)
    try:
        if output is None:
            got = asyncio.run(_download(settings, bucket, key, sys.stdout.buffer))
            sys.stdout.buffer.flush()
        else:
            got = _download_to(settings, bucket, key, output, progress=not json_out)
    except DownloadError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    if json_out:
        document = {"uri": uri, "path": str(output), "bytes": got.bytes, "sha256": got.sha256}
        console.print_json(json.dumps({**document, "content_type": got.content_type}))
    elif output is not None:
        console.print(f"Wrote {output} ({got.bytes:,} bytes) from {uri}")


def _download_to(
    settings: ClientSettings, bucket: str, key: str, path: Path, *, progress: bool
) -> Downloaded:
    """Download into a temporary file beside `path`, renamed only once complete: a failed
    download never leaves a truncated FILE behind."""
    partial = path.with_name(f".{path.name}.part")
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=errors,
        transient=True,
        disable=not (progress and errors.is_terminal),
    )
    try:
        with bar, partial.open("wb") as sink:

            def started(total: int) -> Callable[[int], None] | None:
                if total < PROGRESS_MIN_BYTES:
                    return None
                task = bar.add_task(path.name, total=total)
                return lambda n: bar.advance(task, n)

            got = asyncio.run(_download(settings, bucket, key, sink, started))
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return got


async def _download(
    settings: ClientSettings,
    bucket: str,
    key: str,
    sink: BinaryIO,
    started: Callable[[int], Callable[[int], None] | None] = lambda _: None,
) -> Downloaded:
    """Stream the object into `sink`; `started(size)` may return a per-chunk callback."""
    from botocore.exceptions import BotoCoreError, ClientError

    from shared.s3 import s3_client, s3_uri

    uri = s3_uri(bucket, key)
    digest, size = hashlib.sha256(), 0
    try:
        async with s3_client(settings) as s3:
            got = await s3.get_object(Bucket=bucket, Key=key)
            advance = started(got["ContentLength"])
            async for chunk in got["Body"].iter_chunks(CHUNK_BYTES):
                sink.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if advance is not None:
                    advance(len(chunk))
    except ValueError as exc:  # settings.require: no S3 endpoint or credentials
        raise DownloadError(str(exc)) from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") in MISSING:
            raise DownloadError(f"no object at {uri}") from exc
        raise DownloadError(
            f"cannot read {uri}: {error.get('Code')}: {error.get('Message')}"
        ) from exc
    except (BotoCoreError, OSError) as exc:
        raise DownloadError(
            f"cannot reach S3 at {settings.s3_endpoint_url} ({exc}): is the stack running? "
            "`choreo up` starts it."
        ) from exc
    return Downloaded(size, digest.hexdigest(), got.get("ContentType", ""))
