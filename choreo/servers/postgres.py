"""PostgreSQL on loopback: initdb once, then the postmaster itself as the child process."""

import contextlib
import glob
import grp
import importlib.util
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from choreo.servers.ports import free_port
from choreo.servers.process import ServerProcess, ServerStartError

SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; this system user is created when no `postgres` exists.
FALLBACK_SYSTEM_USER = "choreo-pg"
# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


class PostgresServer(ServerProcess):
    """A PostgreSQL cluster in data_dir with a password-protected superuser on 127.0.0.1."""

    # SIGTERM ("smart") waits for every client to disconnect; SIGINT ("fast") ends sessions.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        password: str,
        *,
        port: int | None = None,
        socket_dir: Path | None = None,
        log_path: Path | None = None,
        bindir: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = data_dir.absolute()
        self.password = password
        self.port = port if port is not None else free_port()
        # Inside the data directory by default: already private to the server's user.
        self.socket_dir = (socket_dir or self.data_dir).absolute()
        self.bindir = bindir if bindir is not None else find_bindir()
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"PostgreSQL socket path {socket_path} is longer than {_MAX_SOCKET_PATH} "
                "bytes: pass a shorter socket_dir (e.g. under /tmp)"
            )
        super().__init__(
            "postgres",
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-k",
                str(self.socket_dir),
                "-c",
                "listen_addresses=127.0.0.1",
            ],
            # initdb needs an empty directory, so this file is only created after it ran.
            log_path=log_path if log_path is not None else self.data_dir / "postgres.log",
            cwd=self.data_dir,
            start_timeout=start_timeout,
        )

    def dsn(
        self, user: str = SUPERUSER, password: str | None = None, database: str = "postgres"
    ) -> str:
        """A TCP connection URL; `password` defaults to the superuser's for the superuser."""
        if password is None and user == SUPERUSER:
            password = self.password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    @property
    def admin_dsn(self) -> str:
        return self.dsn()

    def is_ready(self) -> bool:
        # pg_isready asks the postmaster itself, so "starting up" and "recovering" count as
        # not ready, and it needs no password.
        result = subprocess.run(
            [
                str(self.bindir / "pg_isready"),
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-t",
                "1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0

    def _prepare(self) -> None:
        if os.geteuid() == 0:
            self.user = _system_user()
        owner = pwd.getpwnam(self.user) if self.user is not None else None
        created = _make_dirs(self.data_dir)
        if self.socket_dir != self.data_dir:
            created += _make_dirs(self.socket_dir)
        for directory in created:
            # Directories we created ourselves may be opened up for the server's user.
            directory.chmod(directory.stat().st_mode | 0o055)
        if owner is not None:
            for path in (self.data_dir, self.socket_dir, self.bindir / "postgres"):
                _check_traversable(path, owner)
        if not (self.data_dir / "PG_VERSION").exists():
            if owner is not None:
                os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
            self._initdb(owner)
        if owner is not None and self.socket_dir != self.data_dir:
            os.chown(self.socket_dir, owner.pw_uid, owner.pw_gid)

    def _initdb(self, owner: pwd.struct_passwd | None) -> None:
        with tempfile.TemporaryDirectory(prefix="choreo-initdb-") as tmp:
            # initdb reads the password from a file; it must be readable by the server's user.
            pwfile = Path(tmp) / "pwfile"
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            if owner is not None:
                os.chown(tmp, owner.pw_uid, owner.pw_gid)
                os.chown(pwfile, owner.pw_uid, owner.pw_gid)
            result = subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                user=self.user,
                group=owner.pw_gid if owner is not None else None,
                extra_groups=(
                    os.getgrouplist(owner.pw_name, owner.pw_gid) if owner is not None else None
                ),
                check=False,
            )
        output = result.stdout.decode("utf-8", "replace")
        if result.returncode != 0:
            tail = "\n".join(output.splitlines()[-30:])
            raise ServerStartError(
                self.name,
                f"initdb of {self.data_dir} failed with code {result.returncode}"
                " (an existing non-empty directory without PG_VERSION is refused)",
                tail,
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            log.write(output)


def find_bindir() -> Path:
    """PostgreSQL's binaries: pg_config's, else the newest Debian one, else pgserver's."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout
            candidates.append(Path(out.strip()))
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(d) for d in debian), key=_version_key, reverse=True)
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "postgres", "pg_isready")):
            return bindir
    raise FileNotFoundError(
        "PostgreSQL binaries (initdb, postgres, pg_isready) not found via pg_config, in "
        "/usr/lib/postgresql/*/bin or in the pgserver package: `pip install pgserver` in "
        "this environment or install the postgresql server package"
    )


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name))


def _system_user() -> str:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam("postgres").pw_name
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(FALLBACK_SYSTEM_USER).pw_name
    useradd = shutil.which("useradd")
    if useradd is None:
        raise RuntimeError(
            "PostgreSQL cannot run as root and there is no `postgres` user nor `useradd` to "
            f"create {FALLBACK_SYSTEM_USER!r}: create a system user named postgres "
            "or run as a non-root user"
        )
    subprocess.run(
        [
            useradd,
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            FALLBACK_SYSTEM_USER,
        ],
        check=True,
        capture_output=True,
    )
    return FALLBACK_SYSTEM_USER


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p that returns the directories it created, outermost first."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
    return list(reversed(missing))


def _check_traversable(path: Path, owner: pwd.struct_passwd) -> None:
    groups = set(os.getgrouplist(owner.pw_name, owner.pw_gid))
    for directory in reversed(path.parents):
        info = directory.stat()
        if info.st_uid == owner.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            group = _group_name(info.st_gid)
            raise PermissionError(
                f"PostgreSQL runs as user {owner.pw_name!r}, which cannot enter {directory} "
                f"(mode {stat.filemode(info.st_mode)}, group {group}) on the way to {path}: "
                f"put the data directory elsewhere (e.g. under /tmp or /var/lib) or allow it "
                f"with `chmod o+x {directory}`"
            )


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
