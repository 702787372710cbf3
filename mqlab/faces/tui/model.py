"""What the TUI shows and what it can do, as plain data and two small interfaces.

The view (app.py, panels) knows only these: a `Source` that hands out a `Frame` (everything
on screen at one moment) and a `Lab` with the controls. The live implementations sit on the
supervisor, runner and observe modules (source.py, lab.py); fixed.py has deterministic ones for
snapshot tests. Nothing here imports Textual.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mqlab.experiments import Row, Suite
from mqlab.figures.progress import ProgressHandler
from mqlab.figures.results import RowResult, SuiteResult
from mqlab.protocol.events import WorkerState
from mqlab.system.observe import GONE, HostInfo, host_of

#: (process name, line): a child's log line, or the lab's own ("lab").
LineHandler = Callable[[str, str], None]
#: Called with each row's result as soon as it is known.
RowHandler = Callable[[RowResult], None]


@dataclass(frozen=True)
class Service:
    """One part of the stack in the header: up (True), down (False) or not known yet (None)."""

    name: str
    url: str
    up: bool | None


@dataclass(frozen=True)
class WorkerRow:
    """One worker as the workers table shows it."""

    id: str
    pid: int
    state: str  # starting | idle | busy | stopping | dead
    job: str  # current job id, or why it is dead
    job_age: float | None  # seconds the current job has run
    jobs_done: int
    ours: bool = True  # started by this lab's supervisor (else: another terminal's worker)
    host: str = ""  # its heartbeat's (the last one, for a dead worker); "" not known yet


@dataclass(frozen=True)
class JobBar:
    """One job on the timeline: which worker process ran it, from when to when (None: still
    running), and how it ended."""

    worker: str
    job: str
    order: int
    start: float
    end: float | None
    pid: int = 0  # the process: a worker id used again by a new process gets a lane of its own
    cut: bool = False  # ended without completing (its worker killed, the job lost or reset)
    attempt: int = 1  # the job's attempt number: above 1, a retry
    #: How the attempt ended when it did not complete: "" (completed, running or cut),
    #: "failed" (a transient failure: it waits `retry_in` seconds, then is retried) or
    #: "dead" (a permanent failure, or its last attempt: on the dead-letter list).
    ending: str = ""
    retry_in: float = 0.0


@dataclass(frozen=True)
class Kill:
    """A worker process that died of SIGKILL, and when the lab saw it go."""

    worker: str
    pid: int
    at: float


@dataclass(frozen=True)
class DeadLetterRow:
    """One entry of `orders:dead` as the dead-letters panel shows it."""

    job: str  # the short job id, or "" for an entry that never was a job
    reason: str
    worker: str = ""
    at: float | None = None


@dataclass(frozen=True)
class Frame:
    """Everything the live panels show at one moment."""

    at: float
    services: tuple[Service, ...]
    depth: int = 0
    trend: int = 0  # -1 falling, 0 steady, 1 rising: the last change of the last seconds
    depth_history: tuple[float, ...] = ()  # the last minute, oldest first
    processing: int = 0
    dead_letters: int = 0
    jobs_per_second: float = 0.0
    orders: dict[str, int] = field(default_factory=dict)
    #: How the attempts so far ended (job_attempts: outcome -> count).
    attempts: dict[str, int] = field(default_factory=dict)
    workers: tuple[WorkerRow, ...] = ()
    bars: tuple[JobBar, ...] = ()
    timeline_seconds: float = 30.0
    #: Jobs by status (PostgreSQL): retrying and dead come from here.
    jobs: dict[str, int] = field(default_factory=dict)
    #: Retries waiting out their backoff (orders:delayed), and seconds until the next is due.
    delayed: int = 0
    next_retry_in: float | None = None
    #: The newest dead letters, newest first (at most a few).
    dead: tuple[DeadLetterRow, ...] = ()
    kills: tuple[Kill, ...] = ()
    #: Each host of a live worker, with its jobs/s (PostgreSQL's count, mqlab.system.observe).
    hosts: tuple[HostInfo, ...] = ()


#: The group of the workers whose heartbeat was not seen yet (starting, or dead before one).
NO_HOST = "(?)"


@dataclass(frozen=True)
class HostGroup:
    """The workers of one host, as the workers table and the timeline group them."""

    host: str
    info: HostInfo | None  # None: a host none of whose workers is live (its rows are dead)
    ids: tuple[str, ...]


def local_id(worker_id: str, host: str) -> str:
    """A worker's id under its host's line: without the `<host>-` it starts with (`w3` for
    hostc-w3 under hostc; the line names the host, and the column is 8 cells)."""
    rest = worker_id.removeprefix(f"{host}-")
    return rest if rest and host else worker_id


def group_by_host(frame: Frame, ids: Sequence[str]) -> list[HostGroup] | None:
    """Worker ids grouped by host, each group in the order of `ids`, the groups in the order
    of frame.hosts (by name) and then the others' (GONE last); None when the live workers run
    on one host or none (nothing to group: the screen stays as it was).

    A worker's host is its row's; a row without one (no heartbeat seen yet) is NO_HOST's,
    unless its id names a live host; a worker without a row (a lane of a process gone) is put
    where mqlab.system.observe.host_of puts its completed jobs (GONE when its id names no live
    host)."""
    if len([h for h in frame.hosts if h.host != GONE]) < 2:
        return None
    known = {w.id: w.host for w in frame.workers if w.host}
    live = {w.id: w.host for w in frame.workers if w.host and w.state != WorkerState.DEAD}
    rows = {w.id for w in frame.workers}
    members: dict[str, list[str]] = {}
    for wid in ids:
        host = known.get(wid) or host_of(wid, live)
        if host == GONE and wid in rows:
            host = NO_HOST
        members.setdefault(host, []).append(wid)
    infos = {h.host: h for h in frame.hosts}
    order = [h.host for h in frame.hosts if h.host in members]
    order += sorted(set(members) - set(order), key=lambda host: (host in (NO_HOST, GONE), host))
    return [HostGroup(host, infos.get(host), tuple(members[host])) for host in order]


class Source(Protocol):
    """Where frames come from; sample() is awaited on the UI loop, so it must not block."""

    async def sample(self) -> Frame: ...

    async def close(self) -> None: ...


class Lab(Protocol):
    """The controls. Methods without `async` block: the app calls them in thread workers."""

    suite: Suite
    job_seconds: float
    state: str  # starting | up | failed | closing | closed
    error: str

    def set_line_handler(self, handler: LineHandler) -> None: ...

    def open(self) -> None: ...

    def close(self) -> None: ...

    def add_worker(self) -> str: ...

    def stop_worker(self, worker_id: str) -> int | None: ...

    def kill_worker(self, worker_id: str) -> int | None: ...

    def reset(self) -> None: ...

    async def fire(self, orders: int) -> dict[int, int]: ...

    # -- Kata 4: failures on purpose ----------------------------------------------------------

    #: The failure rate the lab's workers run with, and the share of a fired batch that is
    #: poison (its products contain "poison").
    fail_rate: float
    poison_share: float

    def set_fail_rate(self, rate: float) -> None:
        """Restart the lab's live workers with Faults(fail_rate=rate); later ones get it too."""
        ...

    def set_poison_share(self, share: float) -> None: ...

    def flush_redis(self) -> None:
        """FLUSHALL: Redis loses every key; the reconciler (PostgreSQL) brings the jobs back."""
        ...

    def postgres_stoppable(self) -> str | None:
        """None when stop_postgres can run; else why not (the server is not the lab's own)."""
        ...

    def stop_postgres(self, seconds: float) -> None:
        """Stop the embedded PostgreSQL the lab started, for `seconds`, then start it again."""
        ...

    async def replay_dead(self) -> int:
        """Queue every dead job again (mqlab.system.dead_letters.replay); how many were queued."""
        ...

    async def run_rows(
        self, rows: Sequence[Row], on_progress: ProgressHandler, on_row: RowHandler
    ) -> SuiteResult: ...
