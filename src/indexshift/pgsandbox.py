"""A throwaway local PostgreSQL server on loopback, for the gateway's PostgreSQL log.

It uses the server binaries installed on the machine (Debian's ``postgresql-NN`` package puts
them in ``/usr/lib/postgresql/NN/bin``): ``initdb`` a fresh data folder, start ``postgres``
directly (not ``pg_ctl``, so its pid is the process group we stop) on a free 127.0.0.1 port
with trust authentication, and stop that process group at the end. PostgreSQL refuses to run
as root, so when we are root it runs as the same unprivileged user as the search-engine
sandbox (:data:`indexshift.sandbox.SANDBOX_USER`).

The server keeps ``fsync`` and ``synchronous_commit`` on: what it reports committed is on disk.
Only ``initdb`` runs with ``--no-sync`` (a catalog that a power cut would lose is recreated by
the next run anyway).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from indexshift import sandbox
from indexshift.errors import EnvironmentProblem

BIN_DIRS_GLOB = "/usr/lib/postgresql/*/bin"
NEEDED_BINARIES = ("initdb", "postgres")


def find_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``postgres``: $INDEXSHIFT_PG_BIN, PATH, then the
    newest ``/usr/lib/postgresql/NN/bin``."""
    candidates: list[Path] = []
    if os.environ.get("INDEXSHIFT_PG_BIN"):
        candidates.append(Path(os.environ["INDEXSHIFT_PG_BIN"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(Path("/").glob(BIN_DIRS_GLOB.lstrip("/")), key=_major, reverse=True)
    for folder in candidates:
        if all((folder / name).is_file() for name in NEEDED_BINARIES):
            return folder
    raise EnvironmentProblem(
        "the PostgreSQL server binaries (initdb, postgres) are not installed",
        hint="install Debian's postgresql package (apt-get install postgresql) or set "
             "INDEXSHIFT_PG_BIN to the folder that holds them",
    )


def _major(bin_dir: Path) -> int:
    match = re.search(r"postgresql/(\d+)/bin", str(bin_dir))
    return int(match.group(1)) if match else 0


@dataclass
class PgServer:
    """A running throwaway server; :meth:`stop` ends it and removes its folder."""

    root: Path
    port: int
    user: str
    pid: int
    bin_dir: Path
    started_in_s: float  # initdb plus start until it accepted a connection

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a database (if missing); its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"bad database name {name!r}")
        with psycopg.connect(self.url(), autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                        (name,)).fetchone()
            if exists is None:
                connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def alive(self) -> bool:
        return sandbox.process_group_alive(self.pid)

    def stop(self, grace_s: float = 30.0, *, remove: bool = True) -> None:
        """Stop the server, then SIGKILL its process group after the grace period.

        A server whose folder is removed gets an immediate shutdown (SIGQUIT: no final
        checkpoint of data about to be deleted); one that is kept a fast one (SIGINT: sessions
        cut, checkpoint written). The signal goes to the postmaster, which stops its children.
        """
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGQUIT if remove else signal.SIGINT)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.05)
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.alive():
                time.sleep(0.05)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def start(root: Path | None = None, *, wait_s: float = 60.0) -> PgServer:
    """initdb a data folder under ``root`` (a fresh temporary folder by default) and start a
    server on a free loopback port; returns once it accepts connections."""
    started = time.monotonic()
    bin_dir = find_bin_dir()
    account = _account()
    created = root is None
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="indexshift-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    data, sockets = root / "data", root / "run"
    sockets.mkdir(exist_ok=True)
    if account is not None:
        for path in (root, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
    user = account.pw_name if account is not None else pwd.getpwuid(os.geteuid()).pw_name
    run_as = _RunAs.of(account)
    initdb = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-E", "UTF8", "--locale=C",
         "--no-sync", "-U", user],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        user=run_as.user, group=run_as.group, extra_groups=run_as.extra_groups, env=run_as.env)
    if initdb.returncode != 0:
        lines = (initdb.stderr or initdb.stdout).strip().splitlines()
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise EnvironmentProblem(
            f"initdb failed in {data}: {lines[-1] if lines else initdb.returncode}",
            hint=f"run {bin_dir / 'initdb'} by hand as user {user} to see why")
    port = sandbox.free_port_base(1, start=25432)
    log_path = root / "postgres.log"
    with log_path.open("ab") as log_file:
        if account is not None:
            os.chown(log_path, account.pw_uid, account.pw_gid)
        process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockets}",
             "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "max_connections=60",
             "-c", "shared_buffers=32MB", "-c", "logging_collector=off"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, user=run_as.user, group=run_as.group,
            extra_groups=run_as.extra_groups, env=run_as.env)
    server = PgServer(root, port, user, process.pid, bin_dir, 0.0)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with psycopg.connect(server.url(), connect_timeout=2):
                break
        except psycopg.OperationalError as exc:
            failed = process.poll() is not None
            if failed or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                server.stop()
                raise EnvironmentProblem(
                    f"PostgreSQL did not start on 127.0.0.1:{port}: "
                    f"{' | '.join(tail) or exc}",
                    hint=f"see {log_path}") from exc
            time.sleep(0.05)
    server.started_in_s = time.monotonic() - started
    return server


def _account() -> pwd.struct_passwd | None:
    """The unprivileged account the server runs as when we are root, else None (ourselves)."""
    return sandbox._ensure_user()


@dataclass(frozen=True)
class _RunAs:
    """The subprocess options that run a program as ``account`` (all None: as ourselves)."""

    user: int | None
    group: int | None
    extra_groups: list[int] | None
    env: dict[str, str] | None

    @classmethod
    def of(cls, account: pwd.struct_passwd | None) -> _RunAs:
        if account is None:
            return cls(None, None, None, None)
        # root's HOME is not readable by the account; nothing is written there anyway.
        env = {**os.environ, "HOME": "/tmp", "USER": account.pw_name,
               "LOGNAME": account.pw_name}
        return cls(account.pw_uid, account.pw_gid, [], env)
