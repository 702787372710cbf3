"""A MQLAB_HOME is used only when it is the user's own (issue 17, item 1).

What mqlab reads from a home names paths and servers (the id, the passwords, the recorded
URLs) and what it writes there (logs, state) lands wherever a link points: a home that
another user made, or a link in one, must be refused before anything changes, and the
service account must not make root write through a link in the account's own folder.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqlab.lab import services
from mqlab.lab.services.home import identity
from mqlab.lab.services.runtime import RUNTIME_ROOT, service_account
from mqlab.procs import is_root
from tests.test_services import mqlab

KNOWN = "known-to-the-attacker-0123456789"
needs_root = pytest.mark.skipif(not is_root(), reason="planting as `nobody` needs root")


def snapshot(*paths: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Owner, group, mode and content (of a file) of each path that exists."""
    seen = {}
    for path in paths:
        if os.path.lexists(path):
            info = os.lstat(path)
            body = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
            seen[str(path)] = (info.st_uid, info.st_gid, info.st_mode, body)
    return seen


def planted_identity(home_id: str) -> str:
    passwords = dict.fromkeys(("redis", "postgres", "app"), KNOWN)
    return json.dumps({"id": home_id, "passwords": passwords, "ports": {}})


def refused(home: Path, *commands: str) -> list[subprocess.CompletedProcess]:
    """`mqlab services COMMAND` for each command, then `down` (refused too; before the fix it
    stopped what the `up` had started)."""
    try:
        return [mqlab(home, "services", command) for command in commands]
    finally:
        mqlab(home, "services", "down")


@pytest.fixture
def outside() -> Iterator[Path]:
    """A folder outside any home, with a file and a folder an attack aims at, in /tmp (not
    pytest's 0700 folders, so that `nobody` can plant beside it)."""
    folder = Path(tempfile.mkdtemp(prefix="mqlab-outside-"))
    (folder / "target").mkdir(mode=0o755)
    (folder / "target").chmod(0o755)
    (folder / "somefile").write_text("keep\n")
    (folder / "somefile").chmod(0o644)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@needs_root
def test_a_home_another_user_made_is_refused_and_nothing_changes(outside: Path) -> None:
    """The issue's attack: `nobody` makes a home under /tmp with a traversal id, passwords it
    knows and logs that are links to root's files; root's `up` and `status` refuse it.

    Slow by design: two runs of the real CLI."""
    nobody = pwd.getpwnam("nobody")
    home = Path(tempfile.mkdtemp(prefix="mqlab-planted-"))
    try:
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        home.chmod(0o755)
        depth = "../" * 8
        plant = (
            f"umask 022; mkdir {home}/log && "
            f"ln -s {outside}/somefile {home}/log/valkey.log && "
            f"ln -s {outside}/somefile {home}/log/postgres.log && "
            f"cat > {home}/home.json"
        )
        done = subprocess.run(
            ["/bin/sh", "-c", plant], input=planted_identity(f"{depth}{outside}/target"),
            text=True, capture_output=True, user=nobody.pw_uid, group=nobody.pw_gid,
            extra_groups=[], cwd="/",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        watched = [outside / "target", outside / "somefile", home, *home.rglob("*")]
        before = snapshot(*watched)
        answers = refused(home, "up", "status")
        assert snapshot(*watched, home / ".lock") == before
        assert not Path(f"{outside}/target.home").exists()
        for seen in answers:
            assert seen.returncode == 1, seen.stdout + seen.stderr
            assert "unsafe MQLAB_HOME" in seen.stderr and "belongs to nobody" in seen.stderr
            assert "Traceback" not in seen.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_an_id_that_is_not_the_hex_mqlab_makes_is_refused(
    tmp_path_factory: pytest.TempPathFactory, outside: Path
) -> None:
    """Even in a home of ours: the id names the home's runtime folder (under root), so a
    `../` id would have made root chown and chmod the folder it names."""
    home = tmp_path_factory.mktemp("badid")
    (home / "home.json").write_text(planted_identity("../" * 8 + f"{outside}/target"))
    (home / "home.json").chmod(0o600)
    before = snapshot(outside / "target")
    [seen] = refused(home, "up")
    assert snapshot(outside / "target") == before
    assert seen.returncode == 1, seen.stdout + seen.stderr
    assert "is not 16 hex digits" in seen.stderr and "Traceback" not in seen.stderr


@pytest.mark.slow
@pytest.mark.parametrize("link", ["log/valkey.log", "services.json", "log"])
def test_a_link_in_a_home_is_refused_not_followed(
    tmp_path_factory: pytest.TempPathFactory, outside: Path, link: str
) -> None:
    """A link where mqlab appends a log, reads its state or keeps its logs: refused with
    its name and target, the target unchanged (it used to be appended to and set 0600)."""
    home = tmp_path_factory.mktemp("link")
    (home / "log").mkdir(mode=0o700)
    if link == "log":
        (home / "log").rmdir()
    (home / link).symlink_to(outside / ("target" if link == "log" else "somefile"))
    before = snapshot(outside / "somefile", outside / "target")
    answers = refused(home, "up", "status")
    assert snapshot(outside / "somefile", outside / "target") == before
    assert not (home / ".lock").exists()
    for seen in answers:
        assert seen.returncode == 1, seen.stdout + seen.stderr
        assert f"{home / link} is a symbolic link" in seen.stderr, seen.stderr


@pytest.mark.slow
@needs_root
def test_the_service_account_cannot_make_root_write_through_a_link(
    tmp_path_factory: pytest.TempPathFactory, outside: Path
) -> None:
    """The servers' account may write in its runtime folder; a link it plants under the name
    of root's temporary config file must not make root truncate and write the link's target.

    Slow by design: the servers start twice."""
    home = tmp_path_factory.mktemp("acct", numbered=True)
    services.up(owned=True, base=home)
    services.down(base=home)
    account = service_account()
    assert account is not None
    runtime = RUNTIME_ROOT / "homes" / identity(home)["id"]
    planted = runtime / f".valkey.conf.{os.getpid()}"
    done = subprocess.run(
        ["ln", "-s", str(outside / "somefile"), str(planted)], capture_output=True, text=True,
        user=account.uid, group=account.gid, extra_groups=[],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    before = snapshot(outside / "somefile")
    failed = None
    try:
        services.up(owned=True, base=home)
    except services.ServicesError as exc:
        failed = exc  # before the fix: valkey.conf had become the link, out of its reach
    finally:
        services.down(base=home)
    assert snapshot(outside / "somefile") == before
    assert failed is None
