"""Notices a blocked event loop, so that `/healthz` can fail when the process is stuck.

A process whose event loop is blocked (a CPU-bound call, a blocking library, a deadlock in
a thread it waits for) still has its pid and its socket: only its answers stop. A task
ticks every `TICK_S`; `/healthz` fails while the last tick is older than the bound, and
for one bound's time after a tick came that late, so that a probe answered just after a
long block (before the next tick) does not report a healthy loop. The embedded stack's
supervisor restarts a service whose `/healthz` fails several probes in a row; Kubernetes'
liveness probe does the same.

A probe of the service's own `/healthz` waits for the event loop like any request, so a
loop that is only saturated (busy, every task late by a second or two) can miss a probe's
timeout and get a working process restarted when it is busiest. With CHOREO_HEALTH_PORT
set, `serve_health` answers `GET /healthz` from a thread of its own on that port, at once,
with the same verdict: alive while the loop keeps ticking, 503 once it stops. The embedded
stack probes that port.
"""

import asyncio
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog

log = structlog.get_logger(__name__)

TICK_S = 0.25


class LoopWatchdog:
    """Measures how late the event loop runs a task that sleeps `TICK_S` at a time."""

    def __init__(self, bound_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound_s = bound_s
        self._clock = clock
        self._last_tick = clock()
        self._last_stall: tuple[float, float] | None = None  # (ended at, seconds)

    async def run(self) -> None:
        """Tick until cancelled (started by the service's lifespan)."""
        while True:
            await asyncio.sleep(TICK_S)
            self.tick()

    def tick(self) -> None:
        now = self._clock()
        late = now - self._last_tick - TICK_S
        self._last_tick = now
        if late > self.bound_s:
            self._last_stall = (now, late)
            log.error("the event loop was blocked", seconds=round(late, 1), bound_s=self.bound_s)

    def problem(self) -> str | None:
        """Why the loop is not healthy now, or None."""
        now = self._clock()
        blocked = now - self._last_tick - TICK_S
        if blocked > self.bound_s:
            return f"event loop blocked for {blocked:.1f} s (bound {self.bound_s:g} s)"
        if self._last_stall is not None and now - self._last_stall[0] < self.bound_s:
            ended, seconds = self._last_stall
            return (
                f"event loop was blocked for {seconds:.1f} s until {now - ended:.1f} s ago "
                f"(bound {self.bound_s:g} s)"
            )
        return None


def serve_health(watchdog: LoopWatchdog, service: str, host: str, port: int) -> ThreadingHTTPServer:
    """Answer `GET /healthz` on `port` from a daemon thread, from `watchdog`'s verdict."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/healthz":
                self._answer(404, {"detail": "only GET /healthz here"})
                return
            problem = watchdog.problem()
            if problem is None:
                self._answer(200, {"status": "ok", "service": service})
            else:
                self._answer(503, {"status": "stalled", "service": service, "detail": problem})

        def _answer(self, status: int, body: dict[str, str]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:  # probes every few seconds: no log lines
            pass

    server = ThreadingHTTPServer((host, port), Health)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
