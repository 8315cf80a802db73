"""A service's /healthz on a real process: 503 while its event loop is, or just was,
blocked longer than CHOREO_LOOP_STALL_S (the test hook blocks it), on its HTTP port once
the loop runs again and on CHOREO_HEALTH_PORT at once; the hook exists only with
CHOREO_TEST_HOOKS."""

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from choreo.servers.ports import free_port
from shared.settings import Settings
from tests.support import service_process

pytestmark = pytest.mark.integration


async def test_healthz_fails_while_the_event_loop_is_blocked(
    settings: Settings, tmp_path: Path
) -> None:
    async with (
        service_process(
            "ingest", settings, tmp_path, CHOREO_TEST_HOOKS="1", CHOREO_LOOP_STALL_S="1"
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        assert (await http.get("/healthz")).json() == {"status": "ok", "service": "ingest"}
        blocked = await http.post("/testing/block-loop", params={"seconds": 3})
        assert blocked.status_code == 202
        await asyncio.sleep(0.5)
        asked = time.monotonic()
        during = await http.get("/healthz")  # answered once the block ends
        waited = time.monotonic() - asked
        assert during.status_code == 503, during.text
        assert during.json()["status"] == "stalled"
        assert "event loop" in during.json()["detail"]
        assert waited > 1.5, "the answer waited for the loop"
        deadline = time.monotonic() + 10
        while (after := await http.get("/healthz")).status_code != 200:
            assert time.monotonic() < deadline, after.text
            await asyncio.sleep(0.2)


async def test_the_health_port_answers_at_once_even_while_the_loop_is_blocked(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    async with (
        service_process(
            "ingest",
            settings,
            tmp_path,
            CHOREO_TEST_HOOKS="1",
            CHOREO_LOOP_STALL_S="1",
            CHOREO_HEALTH_PORT=str(port),
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as health,
    ):
        assert (await health.get("/healthz")).json() == {"status": "ok", "service": "ingest"}
        assert (await health.get("/metrics")).status_code == 404
        blocked = await http.post("/testing/block-loop", params={"seconds": 4})
        assert blocked.status_code == 202
        await asyncio.sleep(2.0)
        asked = time.monotonic()
        during = await health.get("/healthz")
        assert time.monotonic() - asked < 1.0, "answered without the event loop"
        assert during.status_code == 503, during.text
        assert during.json()["detail"].startswith("event loop blocked for")
        deadline = time.monotonic() + 10
        while (after := await health.get("/healthz")).status_code != 200:
            assert time.monotonic() < deadline, after.text
            await asyncio.sleep(0.2)


async def test_the_hook_is_absent_without_test_hooks(settings: Settings, tmp_path: Path) -> None:
    async with (
        service_process("ingest", settings, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        answer = await http.post("/testing/block-loop", params={"seconds": 1})
    assert answer.status_code == 404
