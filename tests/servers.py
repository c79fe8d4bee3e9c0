"""Real services for multi-worker tests: a PostgreSQL server and an ``mlflow server``, both on 127.0.0.1.

PostgreSQL comes from Debian's package (``apt-get install -y postgresql``; ``.ci/run`` installs it). It runs
from a cluster made in a temporary folder, on a free port, with trust authentication on loopback only, so
nothing of the machine's own PostgreSQL (if any) is touched. PostgreSQL refuses to run as root: as root, every
server command runs through ``runuser -u postgres``. A fixture skips with the reason only where the server
cannot be found or started (no package, no ``postgres`` user, no psycopg2).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class Postgres:
    host: str
    port: int
    bindir: Path
    as_user: list[str]

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://postgres@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        subprocess.run([*self.as_user, str(self.bindir / "createdb"), "-h", self.host, "-p", str(self.port),
                        "-U", "postgres", name], check=True, capture_output=True, timeout=30)
        return self.url(name)


def _start_postgres(root: Path) -> Iterator[Postgres]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql); .ci/run installs it")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install 'losslab[test]')")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing: PostgreSQL refuses to run as root")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, sockets = root / "pgdata", root / "pgsock"
    root.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(exist_ok=True)
    if as_user:
        os.chown(root.parent, pw.pw_uid, pw.pw_gid)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chown(sockets, pw.pw_uid, pw.pw_gid)
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    port = free_port()
    # 300 connections: an mlflow server's pools, its job runners and every worker's Optuna pool share this one
    # cluster, and at 100 a killed worker's connections, not yet reaped, ran it out ("too many clients")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    started = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options,
                              "-l", str(root / "server.log"), "-w", "-t", "60", "start"],
                             capture_output=True, text=True, timeout=90)
    if started.returncode != 0:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{log[-2000:]}")
    try:
        yield Postgres("127.0.0.1", port, bindir, as_user)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the session, in a temporary cluster on 127.0.0.1.

    The cluster lives in its own folder under the system's temp dir, not pytest's: pytest's base folder is
    private to root (0700), which the ``postgres`` user could not enter.
    """
    root = Path(tempfile.mkdtemp(prefix="losslab-pg-"))
    try:
        yield from _start_postgres(root / "cluster")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class MlflowServer:
    uri: str
    process: subprocess.Popen[bytes]


def start_mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> MlflowServer:
    """``mlflow server`` on a free loopback port, its runs in ``backend_uri``, its artifacts under ``artifacts``."""
    port = free_port()
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts), "--workers", "1"],
        stdout=handle, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return MlflowServer(uri, process)
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail(f"mlflow server did not answer on {uri} within 120 s: {log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)
