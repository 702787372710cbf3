"""Files and folders that only this user controls: made private, opened without following
links, refused when they are another user's.

mqlab keeps passwords in MQLAB_HOME and, under root, writes into folders the service
account owns. A path there that is a link (`log/valkey.log -> /root/x`, `pg -> /etc`), a
hard link, or a file of another user's is refused (UnsafePath), never followed: root
appending to, chmodding or chowning through it would change a file it never meant to.
Only the standard library here: mqlab.procs opens the servers' logs with it too.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Any

#: The last component of a path is never followed (parents are checked by their owners:
#: MQLAB_HOME's by mqlab.lab.services.home, the runtime folder's by mqlab.lab.services.runtime).
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class UnsafePath(RuntimeError):
    """A path mqlab was to use is a link, another user's, or not the kind of file it should be."""


def user_name(uid: int) -> str:
    """'alice (uid 1000)', or the uid alone when it names no user."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def refuse(path: Path | str, why: str) -> UnsafePath:
    return UnsafePath(f"{path} {why}: refusing to use it")


def _open(path: Path, flags: int, mode: int) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise refuse(path, "is a symbolic link") from None
        if exc.errno == errno.ENOTDIR and os.path.islink(path):
            raise refuse(path, "is a symbolic link") from None
        raise


def check_owner(path: Path | str, info: os.stat_result, owners: Collection[int]) -> None:
    if info.st_uid not in owners:
        mine = " or ".join(user_name(uid) for uid in owners)
        raise refuse(path, f"belongs to {user_name(info.st_uid)}, not to {mine}")


def _mine(owners: Collection[int] | None) -> Collection[int]:
    return (os.geteuid(),) if owners is None else owners


def open_private(
    path: Path, flags: int, *, owners: Collection[int] | None = None, kind: int = stat.S_IFREG
) -> int:
    """os.open() of a regular file (or a folder, kind=S_IFDIR) that is not a link, is one of
    `owners`' (default: ours) and, a file, has no other name (a hard link to a file elsewhere
    would be written through). Created 0600. The caller closes the descriptor."""
    fd = _open(path, flags, 0o600)
    try:
        info = os.fstat(fd)
        if stat.S_IFMT(info.st_mode) != kind:
            raise refuse(path, "is not a " + ("folder" if kind == stat.S_IFDIR else "plain file"))
        check_owner(path, info, _mine(owners))
        if kind == stat.S_IFREG and info.st_nlink > 1:
            raise refuse(path, "has other hard links")
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_dir(path: Path, *, owners: Collection[int] | None = None) -> Path:
    """Create `path` (and its missing parents) as 0700; an existing one, if it is a folder of
    `owners` (default: ours) and no link, is made 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = open_private(path, os.O_RDONLY | os.O_DIRECTORY, owners=owners, kind=stat.S_IFDIR)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def write_private(path: Path, text: str) -> None:
    """Atomically replace `path` with a new 0600 file of ours holding `text`.

    The temporary file is created afresh (O_EXCL, no link followed): in a folder the service
    account may write, a link planted under its name must not make root write elsewhere."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a leftover of a killed run (a link goes, not its target)
    fd = _open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def read_json(path: Path, *, owners: Collection[int] | None = None) -> dict[str, Any]:
    """The JSON object in `path`, a private file of `owners`' (default: ours); {} when there is
    none or it is no JSON object. UnsafePath when it is a link or someone else's."""
    try:
        fd = open_private(path, os.O_RDONLY, owners=owners)
    except FileNotFoundError:
        return {}
    try:
        with os.fdopen(fd, "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
