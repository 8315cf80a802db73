"""`python -m services.transform.streaming`: the child process that runs the streaming
pipelines (started by `supervisor.StreamingSupervisor`), its config as JSON on stdin."""

import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

import structlog

from services.transform.streaming.pipelines import StreamingConfig, run_pipelines
from shared.logs import configure_logging

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
QUIET_LOGGERS = ("pathway_engine", "pathway")


def main(argv: Sequence[str]) -> None:
    """`python -m services.transform.streaming`, the config as one JSON line on stdin."""
    if argv:
        sys.exit("usage: python -m services.transform.streaming < config.json")
    config = StreamingConfig(**json.loads(sys.stdin.readline()))
    _exit_with_parent()
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


def _exit_with_parent() -> None:
    """Have the kernel SIGKILL this child when the transform service dies, even by SIGKILL
    (Linux: PR_SET_PDEATHSIG). Otherwise the orphan would keep consuming beside the
    restarted service's new child. SIGKILL, not SIGTERM: with NATS or the service gone a
    graceful stop can hang, and the pipelines are built to resume from a crash (their
    Pathway persistence and the stream position it records)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        log.warning("could not tie the pipeline to its service", errno=ctypes.get_errno())
    if os.getppid() == 1:  # the service died before the call above: nothing would signal
        sys.exit("the transform service is gone")


if __name__ == "__main__":
    main(sys.argv[1:])
