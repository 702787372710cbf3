"""What the bench measures besides the system's own timestamps: CPU time per process
group, and the cost of one round trip between two processes on this machine."""

from __future__ import annotations

import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from mqlab.lab.services.home import read_state
from mqlab.lab.supervisor import Supervisor


class CpuMeter:
    """CPU seconds spent by some processes between start() and stop(), per group."""

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}

    @staticmethod
    def _times(procs: list[psutil.Process]) -> dict[int, float]:
        out: dict[int, float] = {}
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
        return out

    def start(self) -> None:
        self.before = {name: self._times(find()) for name, find in self.groups.items()}

    def stop(self) -> dict[str, float]:
        spent: dict[str, float] = {}
        for name, find in self.groups.items():
            now = self._times(find())
            spent[name] = sum(t - self.before[name].get(pid, 0.0) for pid, t in now.items())
        return spent


def _self_cpu() -> list[psutil.Process]:
    return [psutil.Process()]


def _tree(pid: int | None) -> Callable[[], list[psutil.Process]]:
    def find() -> list[psutil.Process]:
        if not pid:
            return []
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    return find


_ECHO = """
import socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
while data := sock.recv(64):
    sock.sendall(data)
"""


def round_trips(busy: int = 2000, idle: int = 100, gap: float = 0.005) -> dict[str, float]:
    """Median µs of a 1-byte ping-pong with another process: back to back, and after idling.

    The floor under every hop of the system (client -> API -> PostgreSQL / Redis -> worker):
    on a virtual machine a wake-up from idle can cost several times a busy one.
    """
    ours, theirs = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, "-c", _ECHO, str(theirs.fileno())], pass_fds=[theirs.fileno()]
    )
    theirs.close()
    try:

        def once() -> float:
            start = time.perf_counter()
            ours.sendall(b"x")
            ours.recv(64)
            return time.perf_counter() - start

        once()  # the child is up once it answers
        fast = [once() for _ in range(busy)]
        slow = []
        for _ in range(idle):
            time.sleep(gap)
            slow.append(once())
    finally:
        ours.close()
        child.wait(5)
    return {
        "busy_us": statistics.median(fast) * 1e6,
        "idle_us": statistics.median(slow) * 1e6,
    }


def cpu_meter(sup: Supervisor, base: Path) -> CpuMeter:
    """Client, API, and (for embedded servers) PostgreSQL and Redis CPU."""
    groups: dict[str, Callable[[], list[psutil.Process]]] = {"client": _self_cpu}
    api = sup.children.get("api")
    groups["api"] = _tree(api.pid if api else None)
    if base != Path():
        state = read_state(base)
        groups["postgres"] = _tree(state.get("postgres", {}).get("pid"))
        groups["redis"] = _tree(state.get("redis", {}).get("pid"))
    return CpuMeter(groups)
