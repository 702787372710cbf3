"""Where mqlab keeps its state: data dirs, logs, sockets and the file of running servers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mqlab

STATE_FILE = "services.json"


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


def read_state(base: Path | None = None) -> dict[str, Any]:
    """The recorded servers (an empty dict when none, or when the file is unreadable)."""
    path = (base or home()) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(state: dict[str, Any], base: Path | None = None) -> None:
    """Atomically replace the state file."""
    root = base or home()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{STATE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(root / STATE_FILE)
