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
from mqlab.results import RowResult, SuiteResult
from mqlab.runner import ProgressHandler

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

    async def run_rows(
        self, rows: Sequence[Row], on_progress: ProgressHandler, on_row: RowHandler
    ) -> SuiteResult: ...
