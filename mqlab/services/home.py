"""Where mqlab keeps its state: data dirs, logs, sockets, secrets and the running servers.

MQLAB_HOME is private (0700) and every file mqlab writes in it is 0600: the servers'
passwords are in `home.json`, and `services.json` carries them in the URLs it records.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import mqlab

STATE_FILE = "services.json"
#: What is chosen once per home and kept: its id, the servers' passwords and ports.
IDENTITY_FILE = "home.json"


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


def private_dir(path: Path) -> Path:
    """Create `path` (and its missing parents) as 0700; an existing one is made 0700.

    Only for folders of mqlab's own: nothing outside MQLAB_HOME (or the service runtime
    folder) changes mode.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Atomically replace `path` with a 0600 file holding `text`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_state(base: Path | None = None) -> dict[str, Any]:
    """The recorded servers (an empty dict when none, or when the file is unreadable)."""
    return read_json((base or home()) / STATE_FILE)


def write_state(state: dict[str, Any], base: Path | None = None) -> None:
    """Atomically replace the state file."""
    root = private_dir(base or home())
    write_private(root / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")


def identity(base: Path) -> dict[str, Any]:
    """This home's id, passwords and kept ports, made at first use and kept in a 0600 file.

    Keys: `id`, `passwords` (`redis`, `postgres` for the superuser, `app` for the role the
    API and workers use) and `ports` (filled in by the manager as it first picks them).
    """
    path = private_dir(base) / IDENTITY_FILE
    data = read_json(path)
    if not data.get("id"):
        data = {
            "id": secrets.token_hex(8),
            "passwords": {name: secrets.token_urlsafe(24) for name in ("redis", "postgres", "app")},
            "ports": {},
        }
        save_identity(base, data)
    return data


def save_identity(base: Path, data: dict[str, Any]) -> None:
    write_private(
        private_dir(base) / IDENTITY_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n"
    )
