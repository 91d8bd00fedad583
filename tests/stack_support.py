"""What the stack tests share: free ports, log tails, and a throwaway PostgreSQL cluster started
with the machine's server programs.

The cluster lives in a fresh temporary folder, listens on a free loopback port (and a socket in
that folder), and is stopped and removed on exit. Running as root, its programs run as the
`postgres` user: the server refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class PostgresNotFound(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 60) -> str:
    """The last lines of a log, for an assertion message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


def service_env(service: dict) -> dict[str, str]:
    """A docker compose service's `environment`, as a mapping (compose allows a list too)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def server_bin() -> Path:
    """The folder with initdb and pg_ctl (PATH first, then Debian's versioned folders)."""
    found = shutil.which("initdb")
    candidates = [Path(found).parent] if found else []
    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)]
    for bindir in candidates:
        if (bindir / "pg_ctl").exists():
            return bindir
    raise PostgresNotFound("PostgreSQL server programs (initdb, pg_ctl) not found: install PostgreSQL "
                           "(Debian: apt-get install postgresql; .ci/run does it)")


@dataclass
class Cluster:
    root: Path  # also the folder of the server's socket
    port: int
    user: str
    password: str
    bindir: Path

    def url(self, database: str, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []


@contextmanager
def postgres_cluster(user: str, password: str, databases: tuple[str, ...] = ()):
    bindir = server_bin()
    root = Path(tempfile.mkdtemp(prefix="xco2-pg-"))
    data, port = root / "data", free_port()
    (root / "pwfile").write_text(password + "\n")
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pwfile", "postgres")
        root.chmod(0o755)
        run_as = ["runuser", "-u", "postgres", "--"]

    def pg(*argv: str) -> None:
        done = subprocess.run([*run_as, *argv], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stdout}{done.stderr}")

    cluster = Cluster(root, port, user, password, bindir)
    pg(str(bindir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={root / 'pwfile'}",
       "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C")
    (root / "pwfile").unlink()
    try:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "120",
           "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
        for database in databases:
            cluster.execute(f'CREATE DATABASE "{database}"')
        yield cluster
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
