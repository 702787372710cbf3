"""The Textual app: the panels, the keys, a self-pacing refresh loop, and the controls.

Data flows down as attributes (each refresh hands a Frame to the panels); what happens in
threads (log lines, a control that failed, an experiment's progress) comes up as messages.
Blocking calls (the stack, the supervisor) run in thread workers; the sampling is async, on
this loop; an experiment runs on a loop of its own (experiment_run.py says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.widgets import DataTable, RichLog
from textual.worker import Worker, WorkerCancelled, WorkerFailed, WorkerState

from mqlab.experiments import Row
from mqlab.faces.tui.experiments_panel import ExperimentsPanel, ExperimentsTable
from mqlab.faces.tui.keys_bar import KeysBar
from mqlab.faces.tui.lanes import Timeline
from mqlab.faces.tui.model import Frame, Lab, Source, WorkerRow
from mqlab.faces.tui.panels import (
    FailuresPanel,
    LogPanel,
    QueuePanel,
    StackBar,
    WorkersPanel,
    WorkersTable,
)
from mqlab.faces.tui.screens import ConfirmScreen, HelpScreen, LogFilterScreen
from mqlab.protocol import events, keys

#: Refresh period of the live panels: 5 times a second, as the issue asks, at the least.
REFRESH_SECONDS = 0.2
#: From this many columns on, the wide layout: every panel on one screen.
WIDE = 120
#: How long a note (what a toast would have said) stays in the top bar, by default.
NOTE_SECONDS = 5.0
BATCH_SIZES = (1, 5, 10, 20, 50, 100, 500, 1000)
BATCH_GROUP = Binding.Group("Batch", compact=True)
#: The failure rates and poison shares the keys cycle through (Kata 4).
FAIL_RATES = (0.0, 0.1, 0.3, 0.5)
POISON_SHARES = (0.0, 0.1, 0.3)
#: How long the PostgreSQL drill keeps the server down ("stopped for about 3 s").
PG_DOWN_SECONDS = 3.0


def next_in(cycle: tuple[float, ...], value: float) -> float:
    """The value after `value` in `cycle`, around (a value not in it starts the cycle)."""
    index = cycle.index(value) if value in cycle else -1
    return cycle[(index + 1) % len(cycle)]


@dataclass
class LogLine(Message):
    """A line a child (or the lab) wrote; posted from the supervisor's pump threads."""

    process: str
    line: str


@dataclass
class ControlFailed(Message):
    """A control run in a thread raised: say so rather than crash the lab."""

    what: str
    error: str


class LabApp(App[None]):
    """mqlab's live lab. `source` feeds the panels, `lab` carries out the keys."""

    CSS_PATH = "lab.tcss"
    TITLE = "mqlab"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (WIDE, "-wide")]
    BINDINGS: ClassVar[list[BindingType]] = [
        # In footer order: the everyday keys first, so that a narrow footer keeps them.
        Binding("f", "fire", "Fire"),
        Binding("a", "add_worker", "Add"),
        Binding("s", "stop_worker", "Stop"),
        Binding("k", "kill_worker", "Kill"),
        Binding("r", "run_row", "Run"),
        Binding("R", "run_all", "Run all"),
        Binding("c", "cancel_run", "Cancel run"),
        Binding("plus", "batch(1)", "Batch", group=BATCH_GROUP),
        Binding("minus", "batch(-1)", "Batch", group=BATCH_GROUP),
        Binding("e", "fail_rate", "Fail rate"),
        Binding("P", "poison", "Poison"),
        Binding("L", "replay", "Replay dead"),
        Binding("F", "flush_redis", "Flush Redis"),
        Binding("D", "stop_postgres", "Stop PG"),
        Binding("X", "reset", "Reset"),
        Binding("p", "pause", "Pause"),
        Binding("slash", "filter_log", "Log"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        source: Source,
        lab: Lab,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        handle_signals: bool = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.lab = lab
        self.refresh_seconds = refresh_seconds
        self.handle_signals = handle_signals
        self.frame: Frame | None = None
        self.paused = False
        self.batch = 10
        self.quitting = False
        #: A failure rate is being set (the workers restart): one at a time.
        self.restarting = False
        self._usable: tuple[object, ...] = ()
        self._unmounting = False

    # -- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StackBar(id="stack")
        with VerticalScroll(id="main"):
            with Horizontal(id="top"):
                yield QueuePanel(id="queue")
                yield WorkersPanel(id="workers")
            yield FailuresPanel(id="failures")
            yield Timeline(id="timeline")
            with Horizontal(id="bottom"):
                yield ExperimentsPanel(self.lab, id="experiments")
                yield LogPanel(id="log")
        yield KeysBar()

    def on_mount(self) -> None:
        self.query_one("#timeline").border_title = "timeline: jobs per worker"
        self.query_one(WorkersTable).focus()
        self.query_one(QueuePanel).batch = self.batch
        self._show_faults()
        self.lab.set_line_handler(self._post_line)
        if self.handle_signals:
            # SIGTERM leaves the way `q` does: every child stopped before the app exits.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)
        self.run_worker(self.lab.open, name="open", thread=True, exit_on_error=False)
        self._refresher = self.run_worker(self._refresh_loop(), name="refresh", group="refresh")
        self._update_status()

    @property
    def shutting_down(self) -> bool:
        """The widgets are going or gone: messages still arriving are dropped (a run's end,
        a log line, posted from threads just before)."""
        return self._unmounting or not self.is_running

    def _post(self, message: Message) -> None:
        """post_message from any thread, also after the app is gone (then: dropped)."""
        if self.is_running:
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                self.post_message(message)

    def _post_line(self, process: str, line: str) -> None:
        self._post(LogLine(process, line))

    def _on_sigterm(self) -> None:
        self.run_worker(self.action_quit(), name="sigterm")

    # -- the refresh loop ---------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        """Sample, show, sleep the rest of the period (a slow sample delays, never piles up).

        It also ends on its own once the app shuts down, not only on cancel: redis-py's
        asyncio client can swallow a cancellation that comes mid-command, and the loop then
        drew on a screen gone.
        """
        while not self.shutting_down:
            began = time.monotonic()
            if not self.paused:
                frame = await self.source.sample()
                if self.shutting_down:
                    return
                self.show_frame(frame)
            await asyncio.sleep(max(0.02, self.refresh_seconds - (time.monotonic() - began)))

    def show_frame(self, frame: Frame) -> None:
        old, self.frame = self.frame, frame
        if old is None or old.services != frame.services:
            self.query_one(StackBar).frame = frame
        self.query_one(QueuePanel).frame = frame
        self.query_one(WorkersPanel).frame = frame
        self.query_one(FailuresPanel).frame = frame
        self.query_one(Timeline).show(frame)
        self._update_status()
        self._refresh_usable()

    def _refresh_usable(self) -> None:
        """Refresh the footer only when what is usable changed (not 5 times a second)."""
        if self.shutting_down:
            return
        worker = self.selected_worker()
        usable = (
            self.lab.state,
            self.running is None,
            self.quitting,
            worker,
            self.paused,
            self.restarting,
            bool(self.experiments_table().selected_rows()),
        )
        if usable != self._usable:
            self._usable = usable
            self.refresh_bindings()

    def _update_status(self) -> None:
        if self.shutting_down:
            return
        lab, text = self.lab, ""
        if self.quitting:
            text = "stopping every process ..."
        elif lab.state == "starting":
            text = "starting ..."
        elif lab.state == "failed":
            text = "failed to start: q quits"
        elif (p := self.query_one(ExperimentsPanel).progress) is not None:
            text = f"{p.suite} row {p.row_index}/{p.rows}: {p.phase} {p.done}/{p.total}"
        elif lab.state == "up":
            text = "live"
        else:
            text = lab.state
        if self.paused:
            text = f"PAUSED · {text}"
        self.query_one(StackBar).status = text

    # -- messages from threads and tables -----------------------------------------------------

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """No toasts: they covered the tables and the footer. A note in the top bar for
        `timeout` seconds instead, and a line in the log (where it stays)."""
        text = f"{title}: {message}" if title else message
        if self.shutting_down:
            return
        self.query_one(LogPanel).add("lab", text)
        self.query_one(StackBar).note(text, severity, timeout or NOTE_SECONDS)

    def clear_notifications(self) -> None:
        super().clear_notifications()
        if not self.shutting_down:
            self.query_one(StackBar).shown_note = None

    def on_log_line(self, message: LogLine) -> None:
        if not self.shutting_down:
            self.query_one(LogPanel).add(message.process, message.line)

    def on_control_failed(self, message: ControlFailed) -> None:
        self.notify(f"{message.what}: {message.error}", severity="error", timeout=8)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name == "open" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            if event.state == WorkerState.ERROR:
                self.notify(f"could not start: {self.lab.error}", severity="error", timeout=30)
            self._update_status()
            self._refresh_usable()

    @on(DataTable.RowHighlighted)
    def _selection_moved(self) -> None:
        self._refresh_usable()

    # -- which actions are usable now (the footer shows only those) ---------------------------

    def selected_worker(self) -> WorkerRow | None:
        return self.query_one(WorkersTable).selected()

    def experiments_table(self) -> ExperimentsTable:
        return self.query_one(ExperimentsTable)

    @property
    def running(self) -> list[Row] | None:
        """The rows of the experiment under way, if any."""
        return self.query_one(ExperimentsPanel).running

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        up = self.lab.state == "up" and not self.quitting
        idle = up and self.running is None
        if action in (
            "fire", "add_worker", "reset", "run_all", "flush_redis",
            "stop_postgres", "replay",
        ):  # fmt: skip
            return idle
        if action in ("poison", "batch", "filter_log"):
            # They change what `f` fires and the log below, neither of which a run shows.
            return idle
        if action == "fail_rate":
            return idle and not self.restarting
        if action == "run_row":
            return idle and bool(self.experiments_table().selected_rows())
        if action in ("stop_worker", "kill_worker"):
            worker = self.selected_worker()
            return (
                idle
                and worker is not None
                and worker.ours
                and worker.state != events.WorkerState.DEAD
            )
        if action == "cancel_run":
            return self.running is not None and not self.quitting
        return True

    # -- controls -----------------------------------------------------------------------------

    def _in_thread(self, what: str, work: Callable[[], object]) -> None:
        """Run a blocking control in a thread; a failure comes back as a message."""

        def run() -> None:
            try:
                work()
            except Exception as exc:
                self._post(ControlFailed(what, str(exc) or type(exc).__name__))

        self.run_worker(run, name=what, group="controls", thread=True)

    def _confirmed(self, question: str, what: str, work: Callable[[], object]) -> None:
        """Ask `question`; on yes, run `work` in a thread (as _in_thread)."""

        def answered(yes: bool | None) -> None:
            if yes:
                self._in_thread(what, work)

        self.push_screen(ConfirmScreen(question), answered)

    async def action_fire(self) -> None:
        n = self.batch
        try:
            statuses = await self.lab.fire(n)
        except Exception as exc:
            self.notify(f"fire: {exc}", severity="error")
            return
        answers = ", ".join(
            f"{count} x {status or 'no answer'}" for status, count in statuses.items()
        )
        self.notify(f"fired {n} orders: {answers}", timeout=3)

    def action_batch(self, step: int) -> None:
        index = BATCH_SIZES.index(self.batch) if self.batch in BATCH_SIZES else 2
        self.batch = BATCH_SIZES[max(0, min(len(BATCH_SIZES) - 1, index + step))]
        self.query_one(QueuePanel).batch = self.batch

    def action_add_worker(self) -> None:
        self._in_thread("add worker", self.lab.add_worker)

    def action_stop_worker(self) -> None:
        worker = self.selected_worker()
        if worker is not None:
            self._in_thread(f"stop {worker.id}", lambda: self.lab.stop_worker(worker.id))

    def action_kill_worker(self) -> None:
        worker = self.selected_worker()
        if worker is None:
            return
        question = (
            f"Kill {worker.id} (pid {worker.pid}) with SIGKILL?\n\n"
            "It dies at once, mid-job; the job goes back to the queue when its heartbeat "
            f"expires ({keys.HEARTBEAT_TTL} s) and another worker runs it again."
        )
        self._confirmed(question, f"kill {worker.id}", lambda: self.lab.kill_worker(worker.id))

    def action_reset(self) -> None:
        question = "Delete every order and job, and empty the queue?"
        self._confirmed(question, "reset", self.lab.reset)

    # -- Kata 4: failures on purpose ----------------------------------------------------------

    def _show_faults(self) -> None:
        self.query_one(FailuresPanel).faults = (self.lab.fail_rate, self.lab.poison_share)

    def action_fail_rate(self) -> None:
        """The next failure rate of the cycle: the lab restarts its workers with it."""
        rate = next_in(FAIL_RATES, self.lab.fail_rate)

        def work() -> None:
            try:
                self.lab.set_fail_rate(rate)
            finally:
                self.restarting = False
                with contextlib.suppress(RuntimeError):  # the app closed meanwhile
                    self.call_from_thread(self._show_faults)
                    self.call_from_thread(self._refresh_usable)

        self.restarting = True
        self._refresh_usable()
        self.notify(f"failure rate {rate:.0%}: restarting the workers", timeout=3)
        self._in_thread("failure rate", work)

    def action_poison(self) -> None:
        self.lab.set_poison_share(next_in(POISON_SHARES, self.lab.poison_share))
        self._show_faults()

    def action_flush_redis(self) -> None:
        question = (
            "FLUSHALL: Redis loses every key (the queue, retries waiting, jobs in hand, dead "
            "letters, heartbeats)?\n\nPostgreSQL keeps every job: the workers' reconciler "
            "queues again the ones it still expects to run."
        )
        self._confirmed(question, "flush Redis", self.lab.flush_redis)

    def action_stop_postgres(self) -> None:
        if (why := self.lab.postgres_stoppable()) is not None:
            self.notify(f"stop PostgreSQL: {why}", severity="warning", timeout=8)
            return
        question = (
            f"Stop PostgreSQL for {PG_DOWN_SECONDS:g} s?\n\nThe API answers 503 meanwhile "
            "(never 500); the workers wait for it and go on; no accepted order is lost."
        )
        self._confirmed(
            question, "stop PostgreSQL", lambda: self.lab.stop_postgres(PG_DOWN_SECONDS)
        )

    async def action_replay(self) -> None:
        try:
            n = await self.lab.replay_dead()
        except Exception as exc:
            self.notify(f"replay: {exc}", severity="error")
            return
        self.notify(f"replayed {n} dead jobs" if n else "no dead job to replay", timeout=3)

    def action_run_row(self) -> None:
        rows = self.experiments_table().selected_rows()
        if rows:
            self.query_one(ExperimentsPanel).run(rows)
            self._refresh_usable()

    def action_run_all(self) -> None:
        self.query_one(ExperimentsPanel).run(list(self.lab.suite.rows))
        self._refresh_usable()

    def action_cancel_run(self) -> None:
        self.query_one(ExperimentsPanel).cancel()

    # The run's messages, bubbling up once the experiments panel has drawn them.
    def on_run_progress(self) -> None:
        self._update_status()

    def on_run_ended(self) -> None:
        self._update_status()
        self._refresh_usable()

    def action_pause(self) -> None:
        self.paused = not self.paused
        # The log keeps its lines but stops scrolling, so what a person reads stays put.
        self.query_one("#log-lines", RichLog).auto_scroll = not self.paused
        self._update_status()
        self._refresh_usable()

    def action_filter_log(self) -> None:
        log = self.query_one(LogPanel)

        def chosen(process: str | None) -> None:
            if process is not None:
                log.process = process

        self.push_screen(LogFilterScreen(log.processes(), log.process), chosen)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL for stragglers), then leave."""
        if self.quitting:
            return
        self.quitting = True
        self._update_status()
        self._refresh_usable()
        self.query_one(ExperimentsPanel).cancel()
        await asyncio.to_thread(self.lab.close)
        self.exit()

    async def on_unmount(self) -> None:
        self.quitting = self._unmounting = True
        if self.handle_signals:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        # The sampling must be over before its connections close under it.
        self._refresher.cancel()
        with contextlib.suppress(WorkerCancelled, WorkerFailed):
            await self._refresher.wait()
        self.lab.set_line_handler(lambda _process, _line: None)
        await self.source.close()
        # Also here, for the ways out that skip action_quit (an exception, app.exit()).
        await asyncio.to_thread(self.lab.close)
