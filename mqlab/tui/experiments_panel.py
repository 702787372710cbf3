"""The kata's table in the TUI: expected, ideal, last measured, overhead and verdict, filled
in as the shared Runner reports progress and each row's result."""

from __future__ import annotations

import contextlib
import math
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable

from mqlab.experiments import Row, Suite
from mqlab.results import RowResult, SuiteResult
from mqlab.runner import Progress
from mqlab.tui.experiment_run import ExperimentRun, RowDone, RunEnded, RunProgress
from mqlab.tui.model import Lab

VERDICT_STYLES = {"ok": "bold green", "measured": "cyan", "slow": "bold yellow", "fail": "bold red"}
PHASES = {"workers": "workers…", "firing": "firing", "waiting": "running", "done": "done"}
API_ROW = "api"


def seconds(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3g} s"


class ExperimentsTable(DataTable[Text | str]):
    """One row per suite row (keyed by its index), plus the API's row (the kata's fourth)."""

    #: Fixed widths (80 columns hold them all): progress text changes 20 times a second.
    COLUMNS: ClassVar[dict[str, int]] = {
        "row": 0, "expected": 8, "ideal": 5, "measured": 11, "overhead": 9, "verdict": 9,
    }  # fmt: skip

    def __init__(self, suite: Suite, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.suite = suite
        self.finished: set[str] = set()  # keys of the rows with a verdict from this run

    def on_mount(self) -> None:
        self.cursor_type = "row"
        names = [r.name for r in self.suite.rows] + ["API responds (202)"]
        for name, width in self.COLUMNS.items():
            self.add_column(name, key=name, width=width or max(map(len, names)))
        for index, row in enumerate(self.suite.rows):
            self.add_row(
                row.name, seconds(row.expected_seconds), seconds(row.ideal_seconds), "", "", "",
                key=str(index),
            )  # fmt: skip
        bar = f"max<{self.suite.api_bar_ms():g}ms"
        self.add_row(names[-1], bar, "", "", "", "", key=API_ROW)

    def selected_rows(self) -> list[Row]:
        """The suite row under the cursor (the API row runs nothing of its own)."""
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return [] if key in (None, API_ROW) else [self.suite.rows[int(key)]]

    def _set(self, key: str, measured: Text | str, verdict: Text | str, overhead: str = "") -> None:
        self.update_cell(key, "measured", measured)
        self.update_cell(key, "overhead", overhead)
        self.update_cell(key, "verdict", verdict)

    def pending(self, rows: list[Row]) -> None:
        for row in rows:
            self.finished.discard(self._key(row))
            self._set(self._key(row), "", Text("queued", style="dim"))

    def progress(self, p: Progress) -> None:
        measured = f"{p.done}/{p.total} {p.elapsed:4.1f}s"
        self._set(self._key(p.row), measured, Text(PHASES.get(p.phase, p.phase), style="italic"))

    def cancelled(self, rows: list[Row]) -> None:
        """Rows that did not finish say so; those that did keep their verdict."""
        for row in rows:
            if self._key(row) not in self.finished:
                self._set(self._key(row), "", Text("cancelled", style="dim"))

    def row_result(self, r: RowResult) -> None:
        style = VERDICT_STYLES.get(r.verdict, "")
        self.finished.add(self._key(r.row))
        overhead = "" if math.isnan(r.overhead) else f"{r.overhead * 1000:+.0f} ms"
        measured = "-" if math.isnan(r.makespan) else f"{r.makespan:.3f} s"
        self._set(self._key(r.row), measured, Text(r.verdict, style=style), overhead)

    def result(self, result: SuiteResult) -> None:
        for r in result.rows:
            self.row_result(r)
        if result.api is not None:
            p50 = result.api.latency_ms.get("p50", math.nan)
            style = VERDICT_STYLES.get(result.api.verdict, "")
            high = result.api.latency_ms.get("max", math.nan)
            verdict = Text(result.api.verdict, style=style)
            self._set(API_ROW, f"p50 {p50:.1f}ms", verdict, f"max {high:.0f}ms")

    def verdicts(self) -> dict[str, str]:
        """Row name -> verdict cell text (what a test or a person reads)."""
        out = {}
        for index, row in enumerate(self.suite.rows):
            out[row.name] = str(self.get_cell(str(index), "verdict"))
        return out

    def _key(self, row: Row) -> str:
        return str(self.suite.rows.index(row))


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
        times = sorted({r.job_seconds for r in self.suite.rows})
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
            verdicts = ", ".join(f"{r.row.name}: {r.verdict}" for r in message.result.rows)
            self.app.notify(verdicts, title=message.result.suite.name, timeout=6)
        else:
            self.table.cancelled(message.rows)
            if message.error != "cancelled":
                self.app.notify(f"experiment: {message.error}", severity="error", timeout=10)
        self.running, self.progress, self._run = None, None, None
