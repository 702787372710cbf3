"""The supervisor: owns every child process the lab starts (the API and the workers).

Children run as `python -m mqlab ...` in their own process group, with a parent-death signal,
so that none outlives the lab: not on a normal exit, not on Ctrl-C or SIGTERM (close() stops
them), and not on SIGKILL of the lab itself (the kernel kills them).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import httpx
import redis

from mqlab.lab.environment import Opened
from mqlab.procs import on_a_free_port, spawn, wait_until
from mqlab.protocol import keys
from mqlab.protocol.events import WorkerState
from mqlab.settings import Settings
from mqlab.system.redis_clients import sync_client
from mqlab.system.spec import WorkerSpec

log = logging.getLogger("mqlab.lab.supervisor")

LineHandler = Callable[[str, str], None]  # (child name, line)


class ChildFailed(RuntimeError):
    """A child exited or did not become ready."""


@dataclass(frozen=True)
class Place:
    """A lab host a child may run on (mqlab.lab.hosts): its name (the child's MQLAB_HOST),
    its network namespace, its address, and the servers' URLs as seen from it."""

    host: str
    netns: str
    address: str
    settings: Settings


@dataclass
class Child:
    """One process of the lab."""

    name: str
    kind: str  # api | worker
    proc: subprocess.Popen[bytes]
    #: The lab host it runs on (None: this machine's own network).
    place: Place | None = None
    lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=500))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 20) -> str:
        return "\n".join(list(self.lines)[-n:])


class Supervisor(Opened["Supervisor"]):
    """Start, stop and kill the API and the workers; close() leaves nothing running.

    With `places` (lab hosts), each worker runs on the place with the fewest live workers and
    is named `<host>-w<n>`; an API runs on the place start_api is given."""

    def __init__(
        self,
        settings: Settings,
        on_line: LineHandler | None = None,
        places: Sequence[Place] = (),
    ) -> None:
        self.settings = settings
        self.on_line = on_line
        self.places = list(places)
        self.children: dict[str, Child] = {}
        #: Every API started, in order: a lab on several hosts fires through them all.
        self.api_urls: list[str] = []
        self._lock = threading.Lock()
        self._worker_seq = 0
        self._redis = sync_client(settings.redis_url, decode_responses=True)

    @property
    def api_url(self) -> str | None:
        """The first API's URL (None before one started)."""
        return self.api_urls[0] if self.api_urls else None

    # -- starting ------------------------------------------------------------------------

    def _env(self, place: Place | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update((place.settings if place else self.settings).to_env())
        if place is not None:
            env["MQLAB_HOST"] = place.host
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, kind: str, args: list[str], place: Place | None = None) -> Child:
        if name in self.children and self.children[name].alive():
            raise ValueError(f"a child named {name} is already running")
        proc = spawn(
            [sys.executable, "-m", "mqlab", *args],
            owned=True,
            env=self._env(place),
            stdout=subprocess.PIPE,
            netns=place.netns if place else None,
        )
        child = Child(name=name, kind=kind, proc=proc, place=place)
        with self._lock:
            self.children[name] = child
        threading.Thread(target=self._pump, args=(child,), daemon=True).start()
        return child

    def _pump(self, child: Child) -> None:
        assert child.proc.stdout is not None
        with child.proc.stdout:
            for raw in child.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                child.lines.append(line)
                if self.on_line is not None:
                    self.on_line(child.name, line)

    def start_api(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        require_healthy: bool = True,
        options: Sequence[str] = (),
        place: Place | None = None,
    ) -> Child:
        """Start an API and wait until /health answers 200 (any answer: require_healthy=False).

        `options`: more of `mqlab api`'s options (e.g. ["--header-timeout", "1"]). Without a
        `port`, a free one; if another process takes it before the API binds it (it is free
        when chosen, and the API binds it a second later), another one (procs.on_a_free_port).
        On a `place`, it listens on the place's address (`host` is not used), named
        `<host>-api`."""
        if place is not None:
            return self._start_api(port or 3000, place.address, require_healthy, options, place)
        if port is not None:
            return self._start_api(port, host, require_healthy, options)
        return on_a_free_port(
            lambda free: self._start_api(free, host, require_healthy, options),
            None,
            ChildFailed,
            host,
        )

    def _start_api(
        self,
        port: int,
        host: str,
        require_healthy: bool,
        options: Sequence[str],
        place: Place | None = None,
    ) -> Child:
        args = ["api", "--host", host, "--port", str(port), *options]
        child = self._spawn(f"{place.host}-api" if place else "api", "api", args, place)
        url = f"http://{host}:{port}"

        def healthy() -> bool:
            if not child.alive():
                return True
            with contextlib.suppress(httpx.HTTPError):
                code = httpx.get(f"{url}/health", timeout=1).status_code
                return code == 200 or not require_healthy
            return False

        wait_until(healthy, timeout=30, interval=0.1)
        if not child.alive():
            raise ChildFailed(f"the API exited at start:\n{child.tail()}")
        if url not in self.api_urls:
            self.api_urls.append(url)
        return child

    def next_worker_id(self, place: Place | None = None) -> str:
        while True:
            self._worker_seq += 1
            candidate = f"{place.host}-w{self._worker_seq}" if place else f"w{self._worker_seq}"
            if candidate not in self.children or not self.children[candidate].alive():
                return candidate

    def next_place(self) -> Place | None:
        """The place with the fewest live workers (the first of them on a tie); None without
        places."""
        if not self.places:
            return None
        live = [c.place for c in self.workers()]
        return min(self.places, key=lambda p: sum(1 for q in live if q == p))

    def start_worker(self, spec: WorkerSpec = WorkerSpec(), wait: bool = True) -> Child:
        """Start a worker as `spec` says (named by next_worker_id() when it names none); with
        wait=True, return once its heartbeat says it consumes. Options left unset in the spec
        (the policy, ...) the worker takes from the environment (MQLAB_MAX_ATTEMPTS, ...)."""
        place = self.next_place()
        worker_id = spec.worker_id or self.next_worker_id(place)
        args = ["worker", *replace(spec, worker_id=worker_id).to_args()]
        child = self._spawn(worker_id, "worker", args, place)
        if wait:
            self.wait_workers_ready([worker_id])
        return child

    def start_workers(self, n: int, spec: WorkerSpec = WorkerSpec()) -> list[Child]:
        """Start n workers as `spec` says (each named by next_worker_id()) at once and wait
        until all are idle."""
        children = [self.start_worker(spec, wait=False) for _ in range(n)]
        self.wait_workers_ready([c.name for c in children])
        return children

    def wait_workers_ready(self, ids: list[str], timeout: float = 30) -> None:
        def ready() -> bool:
            for wid in ids:
                if not self.children[wid].alive():
                    raise ChildFailed(f"worker {wid} exited at start:\n{self.children[wid].tail()}")
                # busy counts: a worker may take a job before we look.
                if self._redis.hget(keys.worker_key(wid), "state") not in (
                    WorkerState.IDLE,
                    WorkerState.BUSY,
                ):
                    return False
            return True

        if not wait_until(ready, timeout=timeout, interval=0.05):
            raise ChildFailed(f"workers {ids} not ready within {timeout} s")

    # -- stopping ------------------------------------------------------------------------

    def workers(self) -> list[Child]:
        return [c for c in self.children.values() if c.kind == "worker" and c.alive()]

    def stop(self, name: str, timeout: float = 30) -> int | None:
        """SIGTERM (graceful: a worker finishes its job) and wait; SIGKILL after `timeout`."""
        child = self.children[name]
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)
        try:
            return child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill(name)

    def kill(self, name: str) -> int | None:
        """SIGKILL the child's whole process group: a crash, as the drills want it."""
        child = self.children[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGKILL)
        return child.proc.wait(10)

    def stop_many(self, names: list[str], timeout: float = 30) -> None:
        """SIGTERM them all at once, wait up to `timeout`, SIGKILL what remains.

        One SIGTERM each: a worker reads a second one as "hand the job back now".
        """
        alive = [self.children[n] for n in names if self.children[n].alive()]
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in alive:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(child.name)

    def close(self, timeout: float = 10) -> None:
        """Stop every child (see stop_many) and let go of Redis."""
        self.stop_many(list(self.children), timeout)
        with contextlib.suppress(redis.RedisError):
            self._redis.close()

    def open(self) -> Supervisor:
        """`with Supervisor(...) as sup:` nothing to open (children start when asked)."""
        return self
