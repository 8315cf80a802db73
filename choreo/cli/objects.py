"""Object commands: `choreo ls [s3://bucket/prefix]` lists the lake, `choreo get URI
[-o FILE]` downloads an object from it.

It reads S3 directly with the admin credentials of `<data dir>/env` (or `CHOREO_S3_*`),
streaming in chunks, so objects larger than memory download fine.
"""

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from choreo.cli.common import DataDir, Json, console, errors, plural
from choreo.client import ClientSettings

app = typer.Typer()

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
    """Download into what `path` is: a symlink is followed; a device or a FIFO (`-o
    /dev/null`, `-o /dev/stdout`, a named pipe) is written directly; a regular file, or a
    new one, is written beside and renamed over once complete, so a failed download never
    leaves a truncated FILE behind. Renaming over a device would replace it with a file."""
    target = Path(os.path.realpath(path))
    direct = target.exists() and not target.is_file()
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

    def started(total: int) -> Callable[[int], None] | None:
        if total < PROGRESS_MIN_BYTES:
            return None
        task = bar.add_task(path.name, total=total)
        return lambda n: bar.advance(task, n)

    if direct:
        with bar, target.open("wb") as sink:
            return asyncio.run(_download(settings, bucket, key, sink, started))
    partial = target.with_name(f".{target.name}.part")
    try:
        with bar, partial.open("wb") as sink:
            got = asyncio.run(_download(settings, bucket, key, sink, started))
        partial.replace(target)
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
    from shared.s3 import s3_client, s3_uri

    uri = s3_uri(bucket, key)
    digest, size = hashlib.sha256(), 0
    async with s3_client(settings) as s3, _s3_errors(settings, uri, "object"):
        got = await s3.get_object(Bucket=bucket, Key=key)
        advance = started(got["ContentLength"])
        async for chunk in got["Body"].iter_chunks(CHUNK_BYTES):
            sink.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            if advance is not None:
                advance(len(chunk))
    return Downloaded(size, digest.hexdigest(), got.get("ContentType", ""))


@asynccontextmanager
async def _s3_errors(settings: ClientSettings, uri: str, what: str) -> AsyncIterator[None]:
    """S3 failures as a DownloadError that says what is wrong and what to do."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ValueError as exc:  # settings.require: no S3 endpoint or credentials
        raise DownloadError(str(exc)) from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") in MISSING:
            raise DownloadError(f"no {what} at {uri}") from exc
        raise DownloadError(
            f"cannot read {uri}: {error.get('Code')}: {error.get('Message')}"
        ) from exc
    except (BotoCoreError, OSError) as exc:
        raise DownloadError(
            f"cannot reach S3 at {settings.s3_endpoint_url} ({exc}): is the stack running? "
            "`choreo up` starts it."
        ) from exc


@app.command("ls")
def list_objects(
    data_dir: DataDir,
    uri: Annotated[
        str,
        typer.Argument(
            metavar="[URI]", help="s3://bucket/prefix to list; s3:// (the default): the buckets."
        ),
    ] = "s3://",
    recursive: Annotated[
        bool,
        typer.Option("--recursive", "-r", help="Every key under the prefix, not one level."),
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many entries.")] = 1000,
    json_out: Json = False,
) -> None:
    """List the lake: buckets, or the objects and folders under s3://bucket/prefix.

    One level at a time (folders end with /) unless --recursive. Exit code: 0 listed, 1
    missing bucket or S3 unreachable, 2 bad URI.
    """
    if not uri.startswith("s3://"):
        errors.print(f"[red]not an s3:// URI: {uri!r}[/red] (expected s3://bucket/prefix)")
        raise typer.Exit(EXIT_BAD_URI)
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    settings = ClientSettings.load(data_dir)
    try:
        entries = asyncio.run(_list(settings, bucket, prefix, recursive=recursive, limit=limit))
    except DownloadError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    if json_out:
        console.print_json(json.dumps(entries))
        return
    table = Table(title=f"{uri}: {plural(len(entries), 'entry', 'entries')}", title_justify="left")
    table.add_column("uri", overflow="fold")
    table.add_column("bytes", justify="right")
    table.add_column("modified")
    for e in entries:
        size = "" if e["bytes"] is None else f"{e['bytes']:,}"
        table.add_row(e["uri"], size, e["modified"] or "")
    console.print(table)


async def _list(
    settings: ClientSettings, bucket: str, prefix: str, *, recursive: bool, limit: int
) -> list[dict[str, Any]]:
    """Buckets (no bucket given), else objects and, one level deep, folders under prefix."""
    from shared.s3 import list_entries, s3_client

    where = f"s3://{bucket}/{prefix}" if bucket else "s3://"
    async with s3_client(settings) as s3, _s3_errors(settings, where, "bucket"):
        return await list_entries(s3, bucket, prefix, recursive=recursive, limit=limit)
