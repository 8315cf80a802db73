"""`choreo get URI -o PATH` writes into what PATH is: it follows a symlink, writes to a
device or a FIFO directly, and renames a temporary file only over a regular file (renaming
over `/dev/null` as root once replaced the machine's null device with a file)."""

import asyncio
import os
import stat
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from choreo.cli import app as cli
from services.store.buckets import ensure_buckets
from shared.s3 import s3_client
from shared.settings import Settings
from tests.support import settings_env

pytestmark = pytest.mark.integration
BODY = b"one line\nanother line\n"


@pytest.fixture
async def uri(settings: Settings) -> str:
    """An object in the staging bucket holding BODY."""
    key = f"get-output/{uuid.uuid4().hex}.txt"
    async with s3_client(settings) as s3:
        await ensure_buckets(s3, [settings.bucket_staging])
        await s3.put_object(Bucket=settings.bucket_staging, Key=key, Body=BODY)
    return f"s3://{settings.bucket_staging}/{key}"


async def get(settings: Settings, uri: str, path: Path, tmp_path: Path) -> Any:
    """`choreo get URI -o PATH`, in a thread (the command runs its own event loop)."""
    args = ["get", uri, "-o", str(path), "--data-dir", str(tmp_path / "data")]
    env = settings_env(settings)
    result = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)
    assert result.exit_code == 0, result.output
    return result


async def test_a_regular_file_is_replaced_whole_and_nothing_is_left_beside_it(
    settings: Settings, uri: str, tmp_path: Path
) -> None:
    target = tmp_path / "out.txt"
    target.write_bytes(b"an older, longer content that must not survive\n" * 10)
    await get(settings, uri, target, tmp_path)
    assert target.read_bytes() == BODY
    assert os.listdir(tmp_path) == ["out.txt"]


async def test_a_symlink_is_followed_and_stays_a_symlink(
    settings: Settings, uri: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "real.txt"
    real.write_bytes(b"old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(elsewhere / "new.txt")

    await get(settings, uri, link, tmp_path)
    await get(settings, uri, dangling, tmp_path)

    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert real.read_bytes() == BODY
    assert dangling.is_symlink()
    assert (elsewhere / "new.txt").read_bytes() == BODY
    assert sorted(os.listdir(elsewhere)) == ["new.txt", "real.txt"]


async def test_a_fifo_is_written_into_and_stays_a_fifo(
    settings: Settings, uri: str, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    try:
        await get(settings, uri, fifo, tmp_path)
    finally:
        reader.join(timeout=30)
    assert received == [BODY]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert not (tmp_path / ".pipe.part").exists()


async def test_a_device_is_written_into_and_stays_a_device(
    settings: Settings, uri: str, tmp_path: Path
) -> None:
    # As root, a null device of our own (mknod): were the command to rename over it, the
    # machine's /dev/null would be the victim. Other users cannot replace /dev/null at all.
    if os.geteuid() == 0:
        device = tmp_path / "null"
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:
        device = Path("/dev/null")
    result = await get(settings, uri, device, tmp_path)
    assert stat.S_ISCHR(device.stat().st_mode)
    assert device.stat().st_rdev == os.makedev(1, 3)
    assert device.read_bytes() == b""
    assert f"Wrote {device}" in result.stdout
