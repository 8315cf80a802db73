"""`choreo put FILE s3://bucket/key`: upload a file to the lake and announce it
(`lake.object.written`), so workflows with an object trigger run on it."""

import asyncio
import json
import mimetypes
from pathlib import Path
from typing import Annotated

import typer

from choreo.cli.common import DataDir, Json, console, errors
from choreo.cli.objects import DownloadError, _s3_errors
from choreo.client import ClientSettings
from choreo.follow import connect
from shared.objects import object_written

app = typer.Typer()


@app.command()
def put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The file to upload.")],
    uri: Annotated[str, typer.Argument(metavar="URI", help="Where: s3://bucket/key.")],
    data_dir: DataDir,
    json_out: Json = False,
) -> None:
    """Upload FILE to the lake at URI, then publish its `lake.object.written` event (an
    object trigger such as `raw/files/**.csv` starts its workflow on it).

    Exit code: 0 uploaded and announced, 1 S3 or NATS unreachable, 2 bad URI."""
    from shared.s3 import parse_s3_uri, s3_client  # aioboto3 loads only for this command

    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as exc:
        errors.print(f"[red]{exc}[/red] (expected s3://bucket/key)")
        raise typer.Exit(2) from exc
    settings = ClientSettings.load(data_dir)
    body = file.read_bytes()
    content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"

    async def go() -> str:
        async with s3_client(settings) as s3, _s3_errors(settings, uri, "bucket"):
            written = await s3.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType=content_type
            )
        etag = written["ETag"].strip('"')
        event = object_written(
            bucket, key, size=len(body), version=etag, source="choreo/cli", by="choreo put"
        )
        async with connect(settings) as client:
            await client.jetstream().publish(event.type, event.to_bytes(), headers=event.headers())
        return event.id

    try:
        event_id = asyncio.run(go())
    except DownloadError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    except OSError as exc:
        errors.print(f"[red]cannot reach NATS ({exc}): is the stack running?[/red]")
        raise typer.Exit(1) from exc
    if json_out:
        console.print_json(json.dumps({"uri": uri, "bytes": len(body), "event_id": event_id}))
    else:
        console.print(f"Uploaded {file} to {uri} ({len(body):,} bytes); announced {event_id}.")
