"""The embedded servers let no other local user in, and mqlab's state is private.

The attacks that worked before (issue 8) are run again as `nobody`, with no group but its
own, through tools any user has (bash's /dev/tcp, the service's copy of psql): each must be
refused. They need root (to become nobody, and because only then do the servers run as a
service account), so they are skipped otherwise.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from mqlab.lab import services
from mqlab.lab.services import postgres_server, valkey_server
from mqlab.lab.services.home import identity, read_state
from mqlab.lab.services.runtime import RUNTIME_ROOT, service_account
from mqlab.procs import is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="attacks as `nobody` need root")


def as_nobody(script: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    nobody = pwd.getpwnam("nobody")
    return subprocess.run(
        ["/bin/bash", "-c", script],
        capture_output=True, text=True, timeout=timeout, cwd="/",
        user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )  # fmt: skip


def modes(path: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mode for p in [path, *path.parents]}


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """Servers of a home of their own; the modes of every folder around them, from before."""
    base = tmp_path_factory.mktemp("sec", numbered=True)
    watched = [base, valkey_server.executable(), postgres_server.install_dir() / "bin"]
    before = {k: v for p in watched for k, v in modes(p).items()}
    services.up(owned=True, base=base)
    try:
        yield base, before
    finally:
        services.down(base=base)


@pytest.mark.slow
def test_valkey_refuses_other_users_and_admin_commands(locked: tuple[Path, dict]) -> None:
    """Another local user (nobody) can neither use Valkey without the password nor see its
    socket.

    Slow by design (about 4 s): the attack's replies are read until a 3 s timeout."""
    base, _ = locked
    record = read_state(base)["redis"]
    # The attack: rewrite where Redis saves, then save, as a local user with no password.
    attack = "\\r\\n".join(
        ["CONFIG SET dir /root", "CONFIG SET dbfilename x", "SAVE", "PING", "QUIT"]
    )
    seen = as_nobody(
        f"exec 3<>/dev/tcp/127.0.0.1/{record['port']}; printf '{attack}\\r\\n' >&3; "
        "timeout 3 cat <&3"
    )
    assert seen.stdout.count("-NOAUTH") == 4, seen.stdout + seen.stderr
    sock = record["url"].split("@", 1)[1].split("?", 1)[0]
    assert Path(sock).is_socket()
    assert as_nobody(f"test -e {sock} && echo visible || echo hidden").stdout.strip() == "hidden"
    # Even the password holder runs no admin command; FLUSHALL stays, for the drills.
    client = redis.Redis.from_url(record["url"])
    try:
        for command in (["CONFIG", "SET", "dir", "/root"], ["DEBUG", "SLEEP", "0"],
                        ["MODULE", "LIST"], ["SAVE"], ["ACL", "SETUSER", "x", "on"]):  # fmt: skip
            with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)permission|not allowed"):
                client.execute_command(*command)
        assert client.flushall()
    finally:
        client.close()
    no_password = redis.Redis(host="127.0.0.1", port=record["port"])
    with pytest.raises(redis.exceptions.AuthenticationError):
        no_password.ping()
    no_password.close()


def test_postgres_wants_a_password_and_the_app_role_runs_no_program(
    locked: tuple[Path, dict],
) -> None:
    base, _ = locked
    record = read_state(base)["postgres"]
    psql = postgres_server.bin_dir(service_account()) / "psql"
    seen = as_nobody(
        f"{psql} -w -h 127.0.0.1 -p {record['port']} -U postgres -d postgres "
        "-c \"COPY (SELECT 1) TO PROGRAM 'id'\""
    )
    assert seen.returncode != 0
    assert "password" in seen.stderr, seen.stderr
    with psycopg.connect(record["url"], autocommit=True) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (False,)
        conn.execute("CREATE TEMP TABLE x (line text)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY x FROM PROGRAM 'id'")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            f"postgresql://postgres:wrong@127.0.0.1:{record['port']}/postgres", connect_timeout=3
        )


@pytest.mark.parametrize("name", ["redis", "postgres"])
def test_servers_run_with_no_root_uid_and_no_root_group(
    locked: tuple[Path, dict], name: str
) -> None:
    base, _ = locked
    status = Path(f"/proc/{read_state(base)[name]['pid']}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uids, gids, groups = (fields[k].split() for k in ("Uid", "Gid", "Groups"))
    assert "0" not in uids and "0" not in gids and "0" not in groups, (uids, gids, groups)


def test_state_is_private_and_nothing_outside_changes_mode(locked: tuple[Path, dict]) -> None:
    base, before = locked
    after = {k: Path(k).stat().st_mode for k in before}
    assert after == before
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    private = [base / "services.json", base / "home.json", *base.glob("log/*.log")]
    data = RUNTIME_ROOT / "homes" / identity(base)["id"]
    private += [p for p in data.rglob("*") if p.is_file() and "appendonly" in p.name]
    assert len(private) >= 5
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    for path in (base / "services.json", base / "home.json"):
        seen = as_nobody(f"cat {path}")
        assert seen.returncode != 0 and "ermission denied" in seen.stderr, path
    assert os.stat(data.parent).st_uid == 0


def test_processes_that_make_the_service_user_at_once_agree_on_its_uid(tmp_path: Path) -> None:
    """Four processes that find no service user make it at once (the suite's test processes
    on a fresh machine): each must get the uid that stays. useradd does not lock against
    itself here, so without mqlab's lock each of the four succeeded and the last uid won."""
    name = f"mqlabt{os.getpid() % 100000}"
    go = tmp_path / "go"
    make = (
        "import time\nfrom pathlib import Path\n"
        "from mqlab.lab.services.runtime import system_user\n"
        f"while not Path({str(go)!r}).exists(): time.sleep(0.001)\n"
        f"print(system_user({name!r}, Path('/nonexistent')).pw_uid)"
    )
    try:
        makers = [
            subprocess.Popen([sys.executable, "-c", make], stdout=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        time.sleep(1)  # all four imported and waiting: they start together
        go.touch()
        uids = {int(maker.communicate(timeout=60)[0]) for maker in makers}
        assert uids == {pwd.getpwnam(name).pw_uid}
    finally:
        subprocess.run(["userdel", name], capture_output=True)
