"""structlog set up once per process: JSON off a terminal, readable console on one.

Ids bound with `structlog.contextvars.bind_contextvars(runid=..., stepid=..., event_id=...)`
appear in every line logged while handling that message, including lines from FastStream
and uvicorn, which are routed through the same processors.
"""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import structlog
from structlog.typing import Processor

from shared.envelope import Event

LogFormat = Literal["auto", "json", "console"]


def configure_logging(
    level: str = "INFO", fmt: LogFormat = "auto", *, service: str | None = None
) -> None:
    """Configure structlog and the standard library's root logger (idempotent)."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service is not None:
        shared.append(_add_service(service))

    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else _keep,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn installs its own handlers; let its records reach the root handler instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _add_service(service: str) -> Processor:
    def add(_: object, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        event.setdefault("service", service)
        return event

    return add


def _keep(_: object, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    return event


@contextmanager
def bound_event(event: Event) -> Iterator[None]:
    """Bind an event's ids to every log line written inside the block (and its tasks)."""
    ids = {
        "event_id": event.id,
        "event_type": event.type,
        "runid": event.runid,
        "stepid": event.stepid,
        "correlationid": event.correlationid,
    }
    with structlog.contextvars.bound_contextvars(**{k: v for k, v in ids.items() if v}):
        yield
