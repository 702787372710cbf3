"""Where mqlab keeps its state: data dirs, logs, sockets, secrets and the running servers.

MQLAB_HOME is private (0700) and every file mqlab writes in it is 0600: the servers'
passwords are in `home.json`, and `services.json` carries them in the URLs it records.

It must also be the user's own: a home that another local user made (under /tmp, say)
would hand them what mqlab reads from it (a `home.json` whose id names a path, passwords
they know, logs that are links) and what it writes there. So before anything in it is
read or written (checked()), the home is refused unless it, and everything in it and in its
`log/`, belongs to the user running mqlab, and unless no other user can swap one of its
parent folders; the values read from it are validated before they name a path or a server.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import secrets
import stat
from pathlib import Path
from typing import Any

import mqlab
from mqlab.private_files import (
    UnsafePath,
    check_owner,
    private_dir,
    read_json,
    refuse,
    write_private,
)

STATE_FILE = "services.json"
#: What is chosen once per home and kept: its id, the servers' passwords and ports.
IDENTITY_FILE = "home.json"
#: A home's id as identity() makes it (it names the home's runtime folder under root).
_HOME_ID = re.compile(r"[0-9a-f]{16}")
#: The passwords as identity() makes them (URL-safe base64); also quoted in SQL and configs.
_PASSWORD = re.compile(r"[A-Za-z0-9_-]{16,128}")
_PASSWORDS = ("redis", "postgres", "app")
#: The account the servers run as under root (mqlab.lab.services.runtime); an older mqlab kept
#: their data in MQLAB_HOME, so under root a folder of its there is one of ours.
SERVICE_USER = "mqlab"


class UnsafeHome(UnsafePath):
    """MQLAB_HOME (or something in it) is not this user's alone, or holds what mqlab never
    wrote."""


def home() -> Path:
    """MQLAB_HOME, else `.mqlab/` beside the project checkout, else in the working directory.

    Beside the checkout (not the working directory) so that `mqlab api` and `mqlab worker`
    started from any folder of the project find the same servers.
    """
    env = os.environ.get("MQLAB_HOME")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(mqlab.__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists() and (checkout / "sql").is_dir():
        return checkout / ".mqlab"
    return Path.cwd() / ".mqlab"


def checked(base: Path, *, create: bool = True) -> Path:
    """`base`, once it is safe to keep secrets in and run servers from (made 0700 if it is
    missing and `create`): a folder of ours, no link, whose entries and logs are ours and no
    links, and whose parents no other user can swap. UnsafeHome, saying what is wrong and
    what to do, if not; then nothing in it has changed.

    A home of ours that others could write (made under umask 002) is made 0700 once nothing
    in it is someone else's, and its entries checked again: what someone put there in
    between is theirs, and refused."""
    try:
        _check_parents(base)
        if not create and not os.path.lexists(base):
            return base
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_owner(base, os.lstat(base), {os.geteuid()})
        _check_entries(base)
        private_dir(base)
        _check_entries(base)
    except UnsafePath as exc:
        raise UnsafeHome(
            f"unsafe MQLAB_HOME {base}: {exc}. mqlab keeps the servers' passwords there and "
            "runs them from it, so it must be a folder of yours that no one else can write, "
            "holding nothing of anyone else's and no links: point MQLAB_HOME at another (or "
            "unset it), or remove what is not yours"
        ) from None
    return base


def _check_parents(base: Path) -> None:
    """Every folder above `base` is root's or ours, and no one else may rename what is in it
    (no write access for others, or the sticky bit, as /tmp has)."""
    me = os.geteuid()
    for parent in Path(os.path.abspath(base)).parents:
        try:
            info = os.stat(parent)
        except FileNotFoundError:
            continue  # made by us below, with the home
        check_owner(parent, info, {0, me})
        shared = info.st_mode & 0o002 or (info.st_mode & 0o020 and _others_in(info.st_gid))
        if shared and not info.st_mode & stat.S_ISVTX:
            raise refuse(parent, "is writable by other users (and not sticky, as /tmp is)")


def _others_in(gid: int) -> bool:
    """Whether a user other than us is in the group `gid` (as a member or by primary group)."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    try:
        members = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return True
    members |= {user.pw_name for user in pwd.getpwall() if user.pw_gid == gid}
    return bool(members - {me})


def _check_entries(base: Path) -> None:
    """Everything in the home and in its log/ is ours (or, under root, the service
    account's) and no link: mqlab opens, chmods and chowns them."""
    owners = _owners()
    for folder in (base, base / "log"):
        if folder != base and not os.path.lexists(folder):
            continue
        for entry in os.scandir(folder):
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise refuse(entry.path, f"is a symbolic link (to {os.readlink(entry.path)})")
            check_owner(entry.path, info, owners)


def _owners() -> set[int]:
    """Who may own what is in a home: us, and under root the service account."""
    owners = {os.geteuid()}
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            owners.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    return owners


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_state(base: Path | None = None) -> dict[str, Any]:
    """The recorded servers (an empty dict when none, or when the file is unreadable); only
    records of the shape mqlab writes (a pid, a port, URLs) are kept."""
    root = checked(base or home(), create=False)
    state = read_json(root / STATE_FILE)
    return {name: record for name, record in state.items() if _is_record(record)}


def _is_record(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and type(record.get("pid")) is int
        and _is_port(record.get("port"))
        and all(isinstance(record.get(key, ""), str) for key in ("url", "tcpUrl", "version"))
    )


def _is_port(port: Any) -> bool:
    return type(port) is int and 1024 <= port <= 65535


def write_state(state: dict[str, Any], base: Path | None = None) -> None:
    """Atomically replace the state file."""
    root = checked(base or home())
    write_private_json(root / STATE_FILE, state)


def identity(base: Path) -> dict[str, Any]:
    """This home's id, passwords and kept ports, made at first use and kept in a 0600 file.

    Keys: `id`, `passwords` (`redis`, `postgres` for the superuser, `app` for the role the
    API and workers use) and `ports` (filled in by the manager as it first picks them).
    A file that holds other values than mqlab writes is refused (UnsafeHome): the id names
    a folder, the passwords go into configs and SQL, the ports into URLs.
    """
    path = checked(base) / IDENTITY_FILE
    data = read_json(path)
    if not data.get("id"):
        data = {
            "id": secrets.token_hex(8),
            "passwords": {name: secrets.token_urlsafe(24) for name in _PASSWORDS},
            "ports": {},
        }
        save_identity(base, data)
    problem = _identity_problem(data)
    if problem:
        raise UnsafeHome(
            f"{path} is not as mqlab writes it ({problem}): refusing to use it. Remove it to "
            "start the home afresh (new passwords: remove the home's data too), or restore it"
        )
    return data


def _identity_problem(data: dict[str, Any]) -> str:
    """What is wrong with an identity, or ''."""
    if not isinstance(data["id"], str) or not _HOME_ID.fullmatch(data["id"]):
        return f"the id {str(data['id'])[:40]!r} is not 16 hex digits"
    passwords = data.get("passwords")
    if not isinstance(passwords, dict):
        return "no passwords"
    for name in _PASSWORDS:
        if not isinstance(passwords.get(name), str) or not _PASSWORD.fullmatch(passwords[name]):
            return f"the {name} password is not 16 to 128 URL-safe characters"
    ports = data.setdefault("ports", {})
    if not isinstance(ports, dict) or not all(_is_port(p) for p in ports.values()):
        return "a port is not a number from 1024 to 65535"
    return ""


def save_identity(base: Path, data: dict[str, Any]) -> None:
    write_private_json(checked(base) / IDENTITY_FILE, data)
