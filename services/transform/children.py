"""What the transform service's child processes (the streaming pipelines, the Pathway
step runners) share."""

import ctypes
import os
import signal
import sys

import structlog

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent() -> None:
    """Have the kernel SIGKILL this child when the transform service dies, even by SIGKILL
    (Linux: PR_SET_PDEATHSIG). Otherwise an orphan would keep running beside the restarted
    service's new children. SIGKILL, not SIGTERM: with NATS or the service gone a graceful
    stop can hang, and the streaming pipelines are built to resume from a crash (their
    Pathway persistence and the stream position it records)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        log.warning("could not tie the child process to its service", errno=ctypes.get_errno())
    if os.getppid() == 1:  # the service died before the call above: nothing would signal
        sys.exit("the transform service is gone")
