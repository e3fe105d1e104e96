"""A real PostgreSQL server for tests: Debian's ``postgresql`` package, ``initdb`` into a
temporary directory, ``pg_ctl`` on a free port of 127.0.0.1, stopped and removed afterwards.

PostgreSQL refuses to run as root; as root the server runs as the ``postgres`` user the
package creates (``runuser``). ``make test`` installs the package when its binaries are
missing, so CI skips nothing; elsewhere the tests that need it skip, saying why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's package puts the server's binaries (the newest version wins).
DEBIAN_BINARIES = Path("/usr/lib/postgresql")


def server_binaries() -> Path | None:
    """The ``bin`` directory of the newest installed PostgreSQL, or None."""
    found = sorted((p for p in DEBIAN_BINARIES.glob("*/bin") if (p / "initdb").is_file()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PostgresServer:
    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a throw-away server (trust authentication, on 127.0.0.1 only); stop it after."""
    binaries = server_binaries()
    if binaries is None:
        raise FileNotFoundError("PostgreSQL's binaries (initdb, pg_ctl) are not installed: "
                                "apt-get install postgresql (make test does)")
    root = Path(tempfile.mkdtemp(prefix="paretoedge-pg-"))
    data, socket_dir = root / "data", root / "sockets"
    socket_dir.mkdir()
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(socket_dir, "postgres")
    port = free_port()
    try:
        subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", user,
                                        "--auth=trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        options = (f"-h 127.0.0.1 -p {port} -k {socket_dir} -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off")
        subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-o",
                                        options, "-l", str(root / "server.log"), "-w",
                                        "-t", "60", "start"]),
                       check=True, capture_output=True, timeout=90)
        try:
            yield PostgresServer(port=port, user=user)
        finally:
            subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m",
                                            "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def create_database(server: PostgresServer, name: str) -> str:
    """A new empty database on ``server``; its URL."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=server.port, user=server.user,
                         dbname="postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)
