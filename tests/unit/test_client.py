"""The CLI's HTTP client: a 429 is sent again after its Retry-After, other errors are not."""

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from choreo.client import ClientError, request, retry_after_s


class Busy(BaseHTTPRequestHandler):
    """Answers `status` (with `retry_after` if set) to the first request, then 202; records
    when each request came and its body."""

    status = 429
    retry_after: str | None = "1"
    seen: ClassVar[list[tuple[float, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        Busy.seen.append((time.monotonic(), body))
        if len(Busy.seen) == 1:
            self.send_response(Busy.status)
            if Busy.retry_after is not None:
                self.send_header("Retry-After", Busy.retry_after)
            payload = b'{"detail": "not now"}'
        else:
            self.send_response(202)
            payload = b'{"accepted": 1, "ids": ["a"]}'
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def busy_server() -> Iterator[str]:
    Busy.seen.clear()
    Busy.status, Busy.retry_after = 429, "1"
    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/events"
    server.shutdown()
    server.server_close()


def test_a_429_is_sent_again_after_retry_after(busy_server: str) -> None:
    waits: list[float] = []
    response = request("POST", busy_server, content=b"one", on_busy=waits.append)
    assert response.status_code == 202
    assert waits == [1.0]
    (first, body1), (second, body2) = Busy.seen
    assert body1 == body2 == b"one"
    assert second - first >= 1.0


@pytest.mark.parametrize(("status", "retry_after"), [(429, None), (503, "1")])
def test_only_a_429_with_retry_after_is_sent_again(
    busy_server: str, status: int, retry_after: str | None
) -> None:
    Busy.status, Busy.retry_after = status, retry_after
    with pytest.raises(ClientError, match=f"answered {status}"):
        request("POST", busy_server, content=b"one")
    assert len(Busy.seen) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("0", 0.0), ("", None), ("soon", None), ("-1", None)],
)
def test_retry_after_seconds(value: str, expected: float | None) -> None:
    assert retry_after_s({"retry-after": value} if value else {}) == expected


def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    delay = retry_after_s({"retry-after": when})
    assert delay is not None
    assert 28 <= delay <= 30
