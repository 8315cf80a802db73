"""`python -m services.transform.streaming`: the child process that runs the streaming
pipelines (started by `supervisor.StreamingSupervisor`), its config as JSON on stdin."""

import json
import logging
import os
import sys
from collections.abc import Sequence

import structlog

from services.transform.children import exit_with_parent
from services.transform.streaming.pipelines import StreamingConfig, run_pipelines
from shared.logs import configure_logging

log = structlog.get_logger(__name__)

QUIET_LOGGERS = ("pathway_engine", "pathway")


def main(argv: Sequence[str]) -> None:
    """`python -m services.transform.streaming`, the config as one JSON line on stdin."""
    if argv:
        sys.exit("usage: python -m services.transform.streaming < config.json")
    config = StreamingConfig(**json.loads(sys.stdin.readline()))
    exit_with_parent()
    configure_logging(config.log_level, config.log_format, service="transform-streaming")
    if config.log_level.upper() != "DEBUG":
        for name in QUIET_LOGGERS:  # one INFO line per minibatch and per snapshot
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        run_pipelines(config)
        code = 0
    except SystemExit as exc:  # SIGTERM: Pathway shut the engine down gracefully
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:
        log.exception("streaming pipeline failed")
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    # The connector threads block on NATS forever and are not daemons: exit without them.
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
