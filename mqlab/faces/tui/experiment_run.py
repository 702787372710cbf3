"""Running experiment rows for the TUI: the shared Runner, on an event loop of its own.

Why not on the app's loop: the load generator times each request from its write to the last
byte of the answer, and on the app's loop that answer waits while the screen renders. On a
loaded two-core machine that added tens of milliseconds to the API's measured latency (the
kata's fourth row). So a run gets a thread and a loop to itself, and reports back with
messages; the screen never waits for it either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from textual.message import Message

from mqlab.experiments import Row
from mqlab.faces.tui.model import Lab
from mqlab.figures.progress import Progress
from mqlab.figures.results import RowResult, SuiteResult


@dataclass
class RunProgress(Message):
    """Where the run is (20 times a second); a newer one replaces one not yet handled."""

    progress: Progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunProgress)


@dataclass
class RowDone(Message):
    """A row's result, as soon as it is known."""

    result: RowResult


@dataclass
class RunEnded(Message):
    """The run is over: result set, or error set ("cancelled" when it was)."""

    rows: list[Row]
    result: SuiteResult | None
    error: str = ""


class ExperimentRun:
    """Call it in a thread worker; cancel() from the app's thread."""

    def __init__(self, lab: Lab, rows: list[Row], post: Callable[[Message], object]) -> None:
        self.lab = lab
        self.rows = rows
        self.post = post
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[SuiteResult] | None = None
        self._cancelled = False

    def __call__(self) -> None:
        try:
            result = asyncio.run(self._main())
        except asyncio.CancelledError:
            self.post(RunEnded(self.rows, None, "cancelled"))
        except Exception as exc:
            self.post(RunEnded(self.rows, None, str(exc) or type(exc).__name__))
        else:
            self.post(RunEnded(self.rows, result))

    async def _main(self) -> SuiteResult:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()  # type: ignore[assignment]
        if self._cancelled:  # cancelled before the thread got here
            raise asyncio.CancelledError
        return await self.lab.run_rows(
            self.rows,
            lambda progress: self.post(RunProgress(progress)),
            lambda row: self.post(RowDone(row)),
        )

    def cancel(self) -> None:
        """Cancel the run at its next await (a worker being started finishes starting)."""
        self._cancelled = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            loop.call_soon_threadsafe(task.cancel)
