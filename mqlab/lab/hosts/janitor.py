"""The janitor: removes a lab network's namespaces, bridge and folders when its lab is gone.

A lab's processes die with it (a parent-death signal, mqlab.procs), but a network namespace
(a bind mount under /run/netns), a bridge and a folder stay until someone removes them, and a
SIGKILLed lab runs no code. So the lab starts this process first, in a session of its own (a
Ctrl-C in the terminal does not reach it) and with no parent-death signal, and tells it on a
pipe what it makes *before* it makes it: one JSON object a line,

    {"netns": "mqlab-1a2b-hosta"}   {"link": "mqbr-1a2b"}   {"path": "/tmp/mqlab-hosts-x"}

When the pipe ends (the lab closed it, or died: the kernel closes it either way), the janitor
kills whatever still runs in those namespaces, deletes them and the links, and removes the
folders, then exits. A lab that cleaned up itself leaves it nothing to do.

Only names the lab's own naming rule allows are acted on (mqlab.lab.hosts.network.OWN_NAME),
and only folders made by the lab (a `mqlab-` temporary folder of its own, not a link).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mqlab.procs import pid_alive

#: The names a lab network gives its namespaces and links (see network.py): nothing else is
#: touched, whatever the pipe says.
OWN_NAME = re.compile(r"mqlab-[0-9a-z]{1,8}-[a-z0-9]{1,16}|mq(br|v)-[0-9a-z]{1,8}(-\d{1,2})?")
#: How long the processes in a namespace get after SIGTERM before SIGKILL.
GRACE_SECONDS = 2.0


@dataclass
class Journal:
    """What a lab said it made."""

    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    def add(self, line: str) -> None:
        try:
            entry = json.loads(line)
        except ValueError:
            return
        if not isinstance(entry, dict):
            return
        name = entry.get("netns") or entry.get("link")
        if isinstance(name, str) and OWN_NAME.fullmatch(name):
            (self.netns if "netns" in entry else self.links).append(name)
        path = entry.get("path")
        if isinstance(path, str) and Path(path).name.startswith("mqlab-"):
            self.paths.append(Path(path))


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def pids_in(netns: str) -> list[int]:
    """The processes whose network namespace is `netns` (`ip netns pids`)."""
    out = _ip("netns", "pids", netns).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_all(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL whatever still runs after GRACE_SECONDS."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.05)


def clean(journal: Journal) -> None:
    """Kill what runs in the namespaces, delete them and the links, remove the folders.
    Each step is best-effort: what is already gone is fine."""
    kill_all([pid for ns in journal.netns for pid in pids_in(ns)])
    for ns in journal.netns:
        _ip("netns", "delete", ns)
    for link in journal.links:
        _ip("link", "delete", link)
    for path in journal.paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    # The lab's Ctrl-C or SIGTERM is for the lab: the janitor waits for the pipe to end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    journal = Journal()
    for line in sys.stdin:
        journal.add(line)
    clean(journal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
