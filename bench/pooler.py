"""PgBouncer (Debian's) in transaction mode in front of a PostgreSQL database, for `python -m bench --pgbouncer`,
`python -m bench.router --pgbouncer` and tests/test_pgbouncer.py."""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.target import free_port
from wallet.config import Settings
from wallet.database import EXPECTED_SETTINGS, session_settings


def binary() -> str | None:
    return shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)


@contextmanager
def pgbouncer(database_url: str, server_connections: int) -> Iterator[str]:
    """PgBouncer in transaction mode with `server_connections` to `database_url`'s database; yields a URL of it.
    PgBouncer will not run as root: then it runs as the owner of the server's socket directory (the embedded server's
    user), or as postgres for a server on TCP."""
    found = binary()
    if found is None:
        raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    server = conninfo_to_dict(database_url)
    host = str(server.get("host") or "127.0.0.1")
    user = None
    if os.geteuid() == 0:
        user = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "postgres"
    directory = Path(tempfile.mkdtemp(prefix="wallet-pgbouncer-", dir="/tmp"))
    port = free_port()
    role = str(server.get("user") or "postgres")
    target = " ".join(
        f"{k}={v}" for k, v in server.items() if k in ("host", "port", "dbname", "user", "password") and v
    )
    (directory / "users.txt").write_text(f'"{role}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        f"[databases]\nwallet = {target}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir =\nauth_type = trust\nauth_file = {directory / 'users.txt'}\npool_mode = transaction\n"
        f"default_pool_size = {server_connections}\nmax_client_conn = 1000\n"
        "ignore_startup_parameters = extra_float_digits,options\n"  # pgbench's PGOPTIONS; the database's own apply
    )
    if user is not None:
        for path in (directory, *directory.iterdir()):
            shutil.chown(path, user)
    command = [found, str(directory / "pgbouncer.ini")]
    with (directory / "log").open("wb") as log:
        process = subprocess.Popen(
            ["runuser", "-u", user, "--", *command] if user else command, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"postgresql://{role}@127.0.0.1:{port}/wallet"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg.connect(url, connect_timeout=1).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError("pgbouncer did not start:\n" + (directory / "log").read_text()) from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def set_session_settings(conn: psycopg.Connection) -> None:
    """Gives the connection's database what the service would send at connect and PgBouncer 1.18 does not pass on
    (with the defaults of WALLET_*_TIMEOUT_MS)."""
    for setting, value in session_settings(Settings()).items():
        if setting in EXPECTED_SETTINGS:
            conn.execute(f"ALTER DATABASE \"{conn.info.dbname}\" SET {setting} = '{value}'")
