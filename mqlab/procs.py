"""Small process helpers shared by the embedded servers and the supervisor."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

from mqlab.private_files import open_private

log = logging.getLogger("mqlab.procs")

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
_CLONE_NEWNET = 0x40000000
#: Loaded once here: dlopen() in a forked child of a threaded process can deadlock.
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
#: Servers we started and keep no other handle on: kept here so that they are reaped by
#: terminate() (no zombies, no "still running" warnings from a collected Popen).
_servers: dict[int, subprocess.Popen[bytes]] = {}


def keep(proc: subprocess.Popen[bytes]) -> None:
    """Hold on to a server process until terminate() stops it."""
    _servers[proc.pid] = proc


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: ask Linux to SIGKILL us when the parent dies.

    This is what makes a SIGKILLed lab take its API, workers and owned servers with it: no
    cleanup code of ours runs then, so the kernel has to do it. A parent that died between
    the fork and this call sends no signal any more: the child then exits at once (seen: a
    runner SIGKILLed while it started a worker left that worker running).
    """
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _enter(netns: str, drop: dict[str, Any]) -> None:
    """In the child, before exec: join the network namespace `netns` (/run/netns/NAME, made by
    `ip netns add`), then become drop's user. Joining needs root, and Popen drops to another
    user before it calls preexec_fn, so a child bound for a namespace drops here instead."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
        os._exit(126)
    os.close(fd)
    if "group" in drop:
        os.setgroups(list(drop.get("extra_groups") or []))
        os.setgid(drop["group"])
    if "user" in drop:
        os.setuid(drop["user"])


def _preexec(parent: int | None, netns: str | None, drop: dict[str, Any]) -> None:
    if netns is not None:
        _enter(netns, drop)
    if parent is not None:
        _die_with_parent(parent)


_SPAWNER_NAME = "mqlab-spawner"
_SPAWNER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=_SPAWNER_NAME)


def spawn(
    argv: Sequence[str],
    *,
    owned: bool,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    drop: dict[str, Any] | None = None,
    stdout: int | None = None,
    netns: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process in its own process group.

    owned=True: it dies with this process (parent-death signal), for anything a lab command
    starts. owned=False: a daemon that outlives us (`mqlab services up`). `drop`: Popen's
    user/group/extra_groups/umask, to run it as another account. `netns`: a network
    namespace (a lab host, mqlab.lab.hosts) to run it in. The log is 0600.
    """
    if owned and not threading.current_thread().name.startswith(_SPAWNER_NAME):
        # Linux sends the parent-death signal when the *thread* that forked exits, so owned
        # children are forked from one thread that lives as long as the process (a TUI or
        # runner may start them from short-lived worker threads).
        return _SPAWNER.submit(
            spawn,
            argv,
            owned=owned,
            log_path=log_path,
            env=env,
            drop=drop,
            stdout=stdout,
            netns=netns,
        ).result()
    popen = dict(drop or {})
    moved = {k: popen.pop(k) for k in ("user", "group", "extra_groups") if netns and k in popen}
    preexec: Callable[[], None] | None = None
    if owned or netns:
        preexec = functools.partial(_preexec, os.getpid() if owned else None, netns, moved)
    out = stdout
    if log_path is not None:
        # Never through a link, nor into another user's file (see private_files).
        out = open_private(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.fchmod(out, 0o600)  # a log made by an older mqlab was 0644
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out if out is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            env=env,
            close_fds=True,
            **popen,
        )
    finally:
        if log_path is not None and out is not None:
            os.close(out)


def pid_alive(pid: int | None, expect: str | tuple[str, ...] | None = None) -> bool:
    """True if `pid` runs and (when given) its command line mentions `expect` (or one of them).

    The command-line check is what detects a stale pid file whose pid was reused.
    """
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if expect is None:
            return True
        names = (expect,) if isinstance(expect, str) else expect
        return any(name in part for part in proc.cmdline() for name in names)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def terminate(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Send `sig`, wait up to `timeout`, then SIGKILL. True if the process is gone."""
    popen = _servers.pop(pid, None)
    if popen is not None:
        popen.send_signal(sig)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
        return True
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        return True
    try:
        proc.wait(timeout)
        return True
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
            proc.wait(5)
    return not pid_alive(pid)


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port from the kernel's ephemeral range (never 6379, 5432 or 3000)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


#: How many ports on_a_free_port tries before giving up.
PORT_TRIES = 3


def on_a_free_port(
    start: Callable[[int], T],
    port: int | None,
    failed: type[Exception] | tuple[type[Exception], ...],
    host: str = "127.0.0.1",
) -> T:
    """start(port): on `port`, or on a free one when it is None or taken.

    A free port is only free when it is found: another process (a client's outgoing
    connection, another test process) may take it before the server binds it. So when start
    raises `failed` and its port is no longer free, another free one, PORT_TRIES in all; any
    other failure is start's own, raised as it is.
    """
    for tries_left in reversed(range(PORT_TRIES)):
        if port is None or not port_free(port, host):
            port = free_port(host)
        try:
            return start(port)
        except failed:
            if not tries_left or port_free(port, host):
                raise
            log.warning("port %d was taken before it was bound: another one", port)
    raise AssertionError("unreachable")  # the last try returns or raises


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `check` until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def is_root() -> bool:
    return os.geteuid() == 0
