"""PostgreSQL on loopback: initdb once, then the postmaster itself as the child process.

PostgreSQL refuses to run as root, so as root it runs as the `postgres` system user, which
must reach its data directory and binaries. Root's home and every `mktemp -d` directory are
mode 0700, so a data dir below one is out of that user's reach: the cluster then lives in
a directory of that user's own under /var/tmp (`choreo-postgres-*`), and the data dir path
becomes a symlink to it, which records where it is (`remove_cluster()` deletes both).
Binaries the user cannot reach (pgserver's, in a venv under such a directory) are copied
once to /var/tmp the same way.
"""

import contextlib
import glob
import grp
import hashlib
import importlib.util
import math
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
# Where a cluster or binaries go when the server's user cannot reach them where they are:
# /var/tmp survives a reboot, /tmp is the fallback. (S108: fixed on purpose; what goes
# there is made by mkdtemp, or checked to be root's own before it is used.)
RELOCATION_PARENTS = (Path("/var/tmp"), Path("/tmp"))  # noqa: S108
CLUSTER_PREFIX = "choreo-postgres-"
BINARIES_PREFIX = "choreo-postgres-bin-"


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
        self.password = password
        self.port = port if port is not None else free_port()
        self.owner = _server_user()
        bindir = bindir if bindir is not None else find_bindir()
        self.bindir = bindir if self.owner is None else reachable_bindir(bindir, self.owner)
        # Where the cluster is: `data_dir`, or where its symlink says (see the module doc).
        self.data_dir = (
            data_dir.absolute()
            if self.owner is None
            else cluster_dir(data_dir.absolute(), self.owner)
        )
        # Inside the data directory by default: already private to the server's user.
        self.socket_dir = (socket_dir or self.data_dir).absolute()
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
            user=self.owner.pw_name if self.owner is not None else None,
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
        return self.is_alive(1.0)

    def is_alive(self, timeout: float) -> bool:
        # pg_isready opens a connection to the postmaster itself, so "starting up" and
        # "recovering" count as not ready (a hung postmaster as no answer), and it needs no
        # password.
        result = subprocess.run(
            [
                str(self.bindir / "pg_isready"),
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-t",
                str(max(1, math.ceil(timeout))),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0

    def _prepare(self) -> None:
        owner = self.owner
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


def cluster_dir(path: Path, owner: pwd.struct_passwd) -> Path:
    """Where the cluster of data dir `path` lives, for a server run as `owner`: `path` when
    `owner` can reach it, else a directory of `owner`'s under /var/tmp that `path` becomes
    a symlink to (made on first use, followed afterwards)."""
    if path.is_symlink():
        return path.resolve()
    blocked = _blocking_dir(path, owner)
    if blocked is None:
        return path
    if path.exists() and any(path.iterdir()):
        # A cluster (or anything else) made here earlier is not ours to move.
        _check_traversable(path, owner)
    target = Path(tempfile.mkdtemp(prefix=CLUSTER_PREFIX, dir=_relocation_parent(owner, path)))
    os.chown(target, owner.pw_uid, owner.pw_gid)
    _make_dirs(path.parent)
    if path.exists():
        path.rmdir()  # empty (checked above)
    path.symlink_to(target, target_is_directory=True)
    return target


def remove_cluster(path: Path) -> None:
    """Delete the cluster of data dir `path`: the directory, or the symlink and where it
    points (what `cluster_dir` made)."""
    if path.is_symlink():
        target = path.resolve()
        if target.name.startswith(CLUSTER_PREFIX):
            shutil.rmtree(target, ignore_errors=True)
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def reachable_bindir(bindir: Path, owner: pwd.struct_passwd) -> Path:
    """`bindir`, or when `owner` cannot run its `postgres` (pgserver's binaries in a venv
    under a 0700 directory), a copy of its whole installation under /var/tmp, made once.

    The copy keeps the installation's place beside its package's bundled libraries
    (`<package>/<install>` and `<package>.libs`, as a repaired wheel ships them): the
    binaries find those through a path relative to themselves."""
    if _blocking_dir(bindir / "postgres", owner) is None:
        return bindir
    install = bindir.parent
    package = install.parent
    libs = package.with_name(f"{package.name}.libs")
    # The layout is part of the name, so that a copy made in an earlier layout is not reused.
    digest = hashlib.sha256(f"{install.resolve()}:package+libs".encode()).hexdigest()[:16]
    parent = _relocation_parent(owner, bindir)
    copy = parent / f"{BINARIES_PREFIX}{digest}"
    if not copy.exists():
        # Copied aside, then renamed into place: the name never holds half a copy.
        staging = Path(tempfile.mkdtemp(prefix=BINARIES_PREFIX, dir=parent))
        tree = staging / "copy"
        shutil.copytree(install, tree / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, tree / libs.name, symlinks=True)
        for path in (tree, tree / package.name):
            path.chmod(0o755)
        with contextlib.suppress(OSError):  # another process renamed its copy first
            tree.rename(copy)
        shutil.rmtree(staging, ignore_errors=True)
    info = copy.lstat()
    # We run these binaries (as the server's user): they must be ours, in a world-writable
    # parent where anyone could have made that name first.
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise PermissionError(f"{copy} was not made by Choreo as this user: remove it")
    return copy / package.name / install.name / bindir.name


def _relocation_parent(owner: pwd.struct_passwd, path: Path) -> Path:
    for parent in RELOCATION_PARENTS:
        if parent.is_dir() and _blocking_dir(parent / "x", owner) is None:
            return parent
    raise PermissionError(
        f"PostgreSQL runs as user {owner.pw_name!r}, which can reach neither {path} nor any "
        f"of {', '.join(map(str, RELOCATION_PARENTS))}: put the data directory elsewhere"
    )


def _server_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as when we are root (it refuses root); None otherwise."""
    return pwd.getpwnam(_system_user()) if os.geteuid() == 0 else None


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


def _blocking_dir(path: Path, owner: pwd.struct_passwd) -> Path | None:
    """The first existing directory on the way to `path` that `owner` cannot enter."""
    groups = set(os.getgrouplist(owner.pw_name, owner.pw_gid))
    for directory in reversed(path.parents):
        try:
            info = directory.stat()
        except FileNotFoundError:
            return None  # created later by us, open to the server's user
        if info.st_uid == owner.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


def _check_traversable(path: Path, owner: pwd.struct_passwd) -> None:
    directory = _blocking_dir(path, owner)
    if directory is not None:
        info = directory.stat()
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
