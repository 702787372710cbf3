"""The kata's table in the TUI: expected, ideal, last measured, overhead and verdict, filled
in as the shared Runner reports progress and each row's result."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable

from mqlab.experiments import Row, Suite
from mqlab.faces.tui.experiment_run import ExperimentRun, RowDone, RunEnded, RunProgress
from mqlab.faces.tui.model import Lab
from mqlab.faces.tui.panels import LogPanel
from mqlab.figures import speedup_chart
from mqlab.figures.progress import Progress
from mqlab.figures.results import RowResult, SuiteResult
from mqlab.figures.results_table import TableRow, api_cells, api_planned, planned, row_cells

PHASES = {"workers": "workers…", "firing": "firing", "waiting": "running", "done": "done"}
API_ROW = "api"


def progress_text(p: Progress) -> str:
    """Orders done and time so far, in the measured column's width (10 for up to 99 orders)."""
    elapsed = f"{p.elapsed:.1f}s" if p.elapsed < 10 else f"{p.elapsed:.0f}s"
    return f"{p.done}/{p.total} {elapsed}"


class ExperimentsTable(DataTable[Text | str]):
    """One row per suite row (keyed by its index), plus the API's row (the kata's fourth).
    The cells come from mqlab.figures.results_table; this only places them."""

    #: Widths of the columns whose text changes while a row runs (fixed: progress text changes
    #: 20 times a second); the others fit the suite's cells. The kata's table fills the 75
    #: columns a panel has in an 80-column terminal.
    LIVE_WIDTHS: ClassVar[dict[str, int]] = {"measured": 10, "overhead": 10, "verdict": 9}

    def __init__(self, suite: Suite, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.suite = suite
        self.finished: set[str] = set()  # keys of the rows with a verdict from this run

    def on_mount(self) -> None:
        self.cursor_type = "row"
        rows = [planned(row) for row in self.suite.rows]
        api = api_planned(self.suite)
        cells = [*rows, api]
        for name in ("row", "expected", "ideal"):
            attr = "name" if name == "row" else name
            width = max(len(name), *(len(getattr(t, attr)) for t in cells))
            self.add_column(name, key=name, width=width)
        for name, width in self.LIVE_WIDTHS.items():
            self.add_column(name, key=name, width=width)
        for index, t in enumerate(rows):
            self.add_row(t.name, t.expected, t.ideal, "", "", "", key=str(index))
        self.add_row(api.name, api.expected, api.ideal, "", "", "", key=API_ROW)

    def selected_rows(self) -> list[Row]:
        """The suite row under the cursor (the API row runs nothing of its own)."""
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return [] if key in (None, API_ROW) else [self.suite.rows[int(key)]]

    def _set(self, key: str, measured: Text | str, verdict: Text | str, overhead: str = "") -> None:
        self.update_cell(key, "measured", measured)
        self.update_cell(key, "overhead", overhead)
        self.update_cell(key, "verdict", verdict)

    def _show(self, key: str, t: TableRow) -> None:
        self._set(key, t.measured, Text(t.verdict_text, style=t.style), t.overhead)

    def pending(self, rows: list[Row]) -> None:
        for row in rows:
            self.finished.discard(self._key(row))
            self._set(self._key(row), "", Text("queued", style="dim"))

    def progress(self, p: Progress) -> None:
        phase = Text(PHASES.get(p.phase, p.phase), style="italic")
        self._set(self._key(p.row), progress_text(p), phase)

    def cancelled(self, rows: list[Row]) -> None:
        """Rows that did not finish say so; those that did keep their verdict."""
        for row in rows:
            if self._key(row) not in self.finished:
                self._set(self._key(row), "", Text("cancelled", style="dim"))

    def row_result(self, r: RowResult) -> None:
        self.finished.add(self._key(r.row))
        self._show(self._key(r.row), row_cells(r))

    def result(self, result: SuiteResult) -> None:
        for r in result.rows:
            self.row_result(r)
        if result.api is not None:
            self._show(API_ROW, api_cells(self.suite, result.api))

    def verdicts(self) -> dict[str, str]:
        """Row name -> verdict cell text (what a test or a person reads)."""
        out = {}
        for index, row in enumerate(self.suite.rows):
            out[row.name] = str(self.get_cell(str(index), "verdict"))
        return out

    def _key(self, row: Row) -> str:
        return str(self.suite.rows.index(row))


def verdict_note(result: SuiteResult) -> str:
    """A finished run in the top bar's one line: the suite's verdict and its rows' counts,
    naming only the rows that did not pass ("kata3 PASS: 3 ok, API ok")."""
    counts = Counter(str(r.verdict) for r in result.rows)
    said = ", ".join(f"{n} {verdict}" for verdict, n in counts.items())
    failed = [r.row.name for r in result.rows if r.verdict is None or not r.verdict.passes]
    api = "" if result.api is None else f", API {result.api.verdict}"
    named = f" ({'; '.join(failed)})" if failed else ""
    return f"{result.suite.name} {'PASS' if result.passed else 'FAIL'}: {said}{api}{named}"


class ExperimentsPanel(Vertical):
    """The table, and the run that fills it: the shared Runner, in a thread of its own (see
    experiment_run.py). The run's messages come here first, then bubble up to the app."""

    def __init__(self, lab: Lab, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.lab = lab
        self.suite = lab.suite
        self.running: list[Row] | None = None  # the rows of the run under way
        self.progress: Progress | None = None
        self._run: ExperimentRun | None = None
        times = sorted({r.spec.job_seconds for r in self.suite.rows})
        shown = ", ".join(f"{t:g}" for t in times)
        self.border_title = f"experiments: {self.suite.name} (job {shown} s)"
        self.border_subtitle = "r runs the row, R all"

    def compose(self) -> ComposeResult:
        yield ExperimentsTable(self.suite, id="experiments-table")

    @property
    def table(self) -> ExperimentsTable:
        return self.query_one(ExperimentsTable)

    def run(self, rows: list[Row]) -> None:
        self.running, self.progress = rows, None
        self.table.pending(rows)
        self.scroll_visible()
        self._run = ExperimentRun(self.lab, rows, self._post)
        self.run_worker(self._run, name="experiment", thread=True)

    def cancel(self) -> None:
        if self._run is not None:
            self._run.cancel()

    def _post(self, message: Message) -> None:
        """From the run's thread; dropped once the app is gone (its loop closed)."""
        if self.is_attached:
            with contextlib.suppress(RuntimeError):
                self.post_message(message)

    def on_run_progress(self, message: RunProgress) -> None:
        if self.running is not None:
            self.progress = message.progress
            self.table.progress(message.progress)

    def on_row_done(self, message: RowDone) -> None:
        self.table.row_result(message.result)

    def on_run_ended(self, message: RunEnded) -> None:
        if message.result is not None:
            self.table.result(message.result)
            result = message.result
            log = self.app.query_one(LogPanel)
            for r in result.rows:  # each row's verdict with its reason stays in the log
                log.add("lab", f"{r.row.name}: {r.verdict}: {r.reason}")
            chart = speedup_chart.text(result)
            if chart:
                log.add("lab", "speedup against workers (1 worker = 1x):")
            for line in chart:
                log.add("lab", line)
            self.app.notify(verdict_note(result), timeout=6)
        else:
            self.table.cancelled(message.rows)
            if message.error != "cancelled":
                self.app.notify(f"experiment: {message.error}", severity="error", timeout=10)
        self.running, self.progress, self._run = None, None, None
