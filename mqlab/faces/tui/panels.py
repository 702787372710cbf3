"""The live panels: stack bar, queue, workers, failures, log. Each takes a Frame as an
attribute."""

from __future__ import annotations

import collections
import re
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.reactive import reactive, var
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import DataTable, RichLog, Sparkline, Static

from mqlab.faces.tui.model import (
    Frame,
    HostGroup,
    Service,
    WorkerRow,
    group_by_host,
    local_id,
)
from mqlab.protocol.events import WorkerState
from mqlab.protocol.ids import shorten_job_ids, worker_sort_key

#: Log lines are shortened for a narrow pane: the INFO level and the process's own name go
#: (the margin shows it), and so does the epoch suffix of job ids.
_INFO = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3} )INFO +(?:[\w.-]+: )?")

STATE_STYLES = {
    WorkerState.IDLE: "green",
    WorkerState.BUSY: "bold yellow",
    WorkerState.STOPPING: "magenta",
    WorkerState.STARTING: "cyan",
    WorkerState.DEAD: "bold red",
}
NOTE_STYLES = {"information": "bold", "warning": "bold yellow", "error": "bold white on red"}
TREND = {1: ("▲ rising", "yellow"), -1: ("▼ falling", "green"), 0: ("= steady", "dim")}
#: Cells of a worker id in the workers table and the timeline (`*` included).
ID_WIDTH = 8
#: The row key of a host's line in the workers table (`:` is in no host name, nor in the
#: lab's worker ids).
HOST_KEY = "host:"
#: Colors of the log lines' process names: the lab, the API, then the workers in turn.
PROCESS_COLORS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_green")


def service_text(service: Service, with_url: bool = True) -> Text:
    """● Redis up unix:///... (green up, red down, dim not known yet)."""
    if service.up is None:
        dot, word = ("dim", "…")
    elif service.up:
        dot, word = ("green", "up")
    else:
        dot, word = ("bold red", "down")
    text = Text.assemble(("● ", dot), (service.name, "bold"), " ", (word, dot))
    if service.url and with_url:
        text.append(f" {service.url}", style="dim")
    return text


#: The attempt outcomes the counts line adds when they occur, and what it calls them.
RETRY_OUTCOMES = (("failed", "failed attempts"), ("crashed", "crashed"), ("reclaimed", "reclaimed"))


class StackBar(Widget):
    """The top line: Redis, PostgreSQL and API up or down with their URLs, and what the lab
    is doing. URLs are dropped, the database ones first, where the line would not fit."""

    frame: reactive[Frame | None] = reactive(None)
    status: reactive[str] = reactive("starting ...")
    #: What a toast would have said (see LabApp.notify), shown for a while instead of the URLs.
    shown_note: reactive[tuple[str, str] | None] = reactive(None)
    _note_timer: Timer | None = None

    def note(self, text: str, severity: str, seconds: float) -> None:
        self.shown_note = (text, severity)
        if self._note_timer is not None:
            self._note_timer.stop()
        self._note_timer = self.set_timer(seconds, self._clear_note)

    def _clear_note(self) -> None:
        self.shown_note = None

    def render(self) -> Text:
        services = self.frame.services if self.frame is not None else ()
        status = Text(f" {self.status} ", style="reverse")
        if self.shown_note is not None:
            text, severity = self.shown_note
            style = NOTE_STYLES.get(severity, "")
            line = Text(" ".join(text.split()), style=style)  # one line, whatever it holds
            width = self.size.width - status.cell_len - 1
            line.truncate(width, overflow="ellipsis")
            line.pad_right(width - line.cell_len + 1)
            return line + status
        width = self.size.width - status.cell_len - 1
        for keep_urls in ({"Redis", "PostgreSQL", "API"}, {"Redis", "API"}, {"API"}, set()):
            line = Text.assemble(("mqlab", "bold"))
            for service in services:
                line.append("  ")
                line.append_text(service_text(service, service.name in keep_urls))
            if line.cell_len <= width:
                break
        line.truncate(width, overflow="ellipsis")
        line.pad_right(width - line.cell_len + 1)
        return line + status


class QueuePanel(Vertical):
    """Depth now (with a trend cue), its sparkline over the last minute, jobs/s, counts."""

    BORDER_TITLE = "queue"
    # var, not reactive: a new frame repaints only the lines that changed (see _put).
    frame: var[Frame | None] = var(None)
    batch: reactive[int] = reactive(10)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._shown: dict[str, Text] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="depth")
        yield Sparkline([], id="depth-spark")
        yield Static(id="spark-axis")
        yield Static(id="rates")
        yield Static(id="counts")

    def _put(self, widget_id: str, text: Text) -> None:
        """Update a line only when it changed: a refresh 5 times a second must cost nothing
        while the lab is idle."""
        if self._shown.get(widget_id) != text:
            self._shown[widget_id] = text
            self.query_one(f"#{widget_id}", Static).update(text)

    def watch_frame(self, frame: Frame | None) -> None:
        if frame is None:
            return
        cue, style = TREND[frame.trend]
        depth = Text.assemble("depth ", (f"{frame.depth:>6}", "bold"), "  ", (cue, style))
        self._put("depth", depth)
        spark = self.query_one("#depth-spark", Sparkline)
        history = list(frame.depth_history)
        if history != list(spark.data or []):
            spark.data = history  # a new list each time: Sparkline redraws on assignment
        peak = f"max {max(history, default=0):g}"
        if self._shown.get("spark-axis") != Text(peak):
            self._shown["spark-axis"] = Text(peak)
            axis = Table.grid(expand=True)
            for justify in ("left", "center", "right"):
                axis.add_column(justify=justify)  # type: ignore[arg-type]
            axis.add_row("-60s", peak, "now", style="dim")
            self.query_one("#spark-axis", Static).update(axis)
        rates = Text.assemble(
            "jobs/s ", (f"{frame.jobs_per_second:.1f}", "bold"),
            "  in flight ", (str(frame.processing), "bold"),
        )  # fmt: skip
        # The dead letters are the failures panel's (with their reasons).
        self._put("rates", rates)
        counts = Text()
        for status, n in frame.orders.items():
            if n or status in ("pending", "processing", "completed"):
                counts.append(f"{status} ", style="dim")
                counts.append(f"{n}  ", style="bold")
        # Attempts that did not simply complete (job_attempts): shown only once there are any.
        for outcome, label in RETRY_OUTCOMES:
            if n := frame.attempts.get(outcome, 0):
                counts.append(f"{label} ", style="dim")
                counts.append(f"{n}  ", style="bold yellow")
        self._put("counts", counts or Text("no orders", style="dim"))

    def watch_batch(self, batch: int) -> None:
        # On the border, where the counts' lines cannot push it out of a short panel.
        self.border_subtitle = Text.assemble(
            "batch ", (str(batch), "bold"), (" f fires +/-", "dim")
        )


def short_id(worker_id: str, ours: bool, width: int = ID_WIDTH) -> str:
    """The id in `width` cells, `*` after another terminal's: whole where it fits, else its
    start and end around an ellipsis (a host-pid id keeps both), the `*` never cut."""
    room = width if ours else width - 1
    if len(worker_id) > room:
        head = (room - 1) // 2
        worker_id = f"{worker_id[:head]}…{worker_id[len(worker_id) - (room - 1 - head) :]}"
    return worker_id if ours else f"{worker_id}*"


def job_age(row: WorkerRow) -> str:
    """At most 4 cells: 1.2s, 12s, 345s."""
    if row.job_age is None:
        return ""
    return f"{row.job_age:.1f}s" if row.job_age < 9.95 else f"{row.job_age:.0f}s"


class WorkersTable(DataTable[Text | str]):
    """One row per worker, keyed by its id; cells change in place so the cursor stays put."""

    #: Fixed widths: cells change 5 times a second and columns must not jitter. No cell
    #: padding (it took 12 cells at 80 columns, and the ids were cut to 3): each width has
    #: a cell of room to the next column.
    COLUMNS: ClassVar[dict[str, int]] = {
        "id": ID_WIDTH + 1, "pid": 8, "state": 9, "job": 9, "for": 5, "done": 4,
    }  # fmt: skip

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.cell_padding = 0
        for name, width in self.COLUMNS.items():
            self.add_column(name, key=name, width=width)
        self.rows_shown: dict[str, WorkerRow] = {}
        #: Row key -> its cells, in the table's order (the workers', and the hosts' lines).
        self.cells_shown: dict[str, dict[str, Text | str]] = {}
        #: The live worker last seen under the cursor: when it dies, the cursor moves on.
        self._followed: str | None = None

    def cells(self, row: WorkerRow, host: str = "") -> dict[str, Text | str]:
        """A worker's cells; under its `host`'s line, its id without the host's name."""
        state = Text(row.state, style=STATE_STYLES.get(row.state, ""))
        return {
            "id": short_id(local_id(row.id, host), row.ours),
            "pid": str(row.pid),
            "state": state,
            "job": Text(row.job, style="dim") if row.state == WorkerState.DEAD else row.job,
            "for": job_age(row),
            "done": str(row.jobs_done),
        }

    @staticmethod
    def header_cells(group: HostGroup) -> dict[str, Text | str]:
        """A host's line above its workers: its name, its jobs/s, its live workers' jobs done
        (under `done`); no figures for a host none of whose workers is live."""
        info = group.info
        return {
            "id": Text(short_id(group.host, True), style="bold"),
            "pid": "",
            "state": Text("jobs/s" if info else "", style="dim"),
            "job": Text(f"{info.per_second:.1f}" if info else "", style="bold"),
            "for": "",
            "done": str(info.jobs_done) if info and info.workers else "",
        }

    def show(self, frame: Frame) -> None:
        """Add the frame's new workers, update changed cells, drop rows that left the frame;
        with workers on several hosts, a line per host above its workers (keyed
        `HOST_KEY + host`)."""
        by_id = {r.id: r for r in frame.workers}
        groups = group_by_host(frame, list(by_id))
        wanted: dict[str, dict[str, Text | str]] = {}
        for group in groups or [HostGroup("", None, tuple(by_id))]:
            if groups is not None:
                wanted[HOST_KEY + group.host] = self.header_cells(group)
            for wid in group.ids:
                wanted[wid] = self.cells(by_id[wid], group.host)
        with self.app.batch_update():
            for gone in [key for key in self.cells_shown if key not in wanted]:
                self.remove_row(gone)
            for key, cells in wanted.items():
                before = self.cells_shown.get(key)
                if before is None:
                    self.add_row(*cells.values(), key=key)
                    continue
                for column, value in cells.items():
                    if value != before[column]:
                        self.update_cell(key, column, value)
            self.cells_shown, self.rows_shown = wanted, by_id
            if [k.value for k in self.rows] != list(wanted):
                self._reorder(list(wanted))
            if self._host_line(self.cursor_row):  # where a new table's cursor starts
                self.move_cursor(row=self.cursor_row + 1)
        self._follow_the_living()

    def _host_line(self, row: int) -> bool:
        rows = self.ordered_rows
        return 0 <= row < len(rows) and (rows[row].key.value or "").startswith(HOST_KEY)

    def validate_cursor_coordinate(self, value: Coordinate) -> Coordinate:
        """The cursor steps over the hosts' lines (nothing to stop or kill there): on in the
        direction it moved, else back."""
        value = super().validate_cursor_coordinate(value)
        if not self._host_line(value.row):
            return value
        step = 1 if value.row >= self.cursor_coordinate.row else -1
        for row in (value.row + step, value.row - step):
            if 0 <= row < self.row_count and not self._host_line(row):
                return Coordinate(row, value.column)
        return value

    def _reorder(self, keys: list[str]) -> None:
        """The rows in this order, the cursor on the row it was on. New rows are added at the
        end: a host's new worker belongs in its group (and a row in worker_sort_key order,
        one host or several)."""
        under = self.selected_key()
        self.clear()
        for key in keys:
            self.add_row(*self.cells_shown[key].values(), key=key)
        if under in keys:
            self.move_cursor(row=keys.index(under))

    def _follow_the_living(self) -> None:
        """The worker under the cursor died (`k`, `s`, a crash, an experiment's new pool): the
        cursor moves on to the first live worker of the lab's, at once or as soon as there is
        one, so that `s` and `k` stay in the footer. A dead row the cursor was moved to by
        hand stays under it."""
        under = self.selected()
        if under is None or under.state != WorkerState.DEAD:
            self._followed = None if under is None else under.id
            return
        if under.id != self._followed:
            return  # put there by hand
        for index, key in enumerate(k.value for k in self.rows):
            other = self.rows_shown.get(key or "")
            if other is not None and other.ours and other.state != WorkerState.DEAD:
                self.move_cursor(row=index)
                self._followed = other.id
                return

    def selected_key(self) -> str | None:
        """The key of the row under the cursor (a worker id, or a host's line), if any."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def selected(self) -> WorkerRow | None:
        """The worker under the cursor, if any (none on a host's line)."""
        return self.rows_shown.get(self.selected_key() or "")


class WorkersPanel(Vertical):
    BORDER_TITLE = "workers"
    frame: var[Frame | None] = var(None)

    def compose(self) -> ComposeResult:
        yield WorkersTable(id="workers-table", zebra_stripes=True)

    def watch_frame(self, frame: Frame | None) -> None:
        if frame is None:
            return
        self.query_one(WorkersTable).show(frame)
        alive = sum(1 for w in frame.workers if w.state != WorkerState.DEAD)
        busy = sum(1 for w in frame.workers if w.state == WorkerState.BUSY)
        subtitle = f"{alive} alive, {busy} busy"
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle


class LogPanel(Vertical):
    """The children's log lines (and the lab's own), filterable by process."""

    BORDER_TITLE = "log"
    MAX_LINES = 2000
    process: reactive[str] = reactive("")  # "" = every process

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.lines: collections.deque[tuple[str, str]] = collections.deque(maxlen=self.MAX_LINES)
        self.process_colors: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield RichLog(id="log-lines", max_lines=self.MAX_LINES, wrap=True, min_width=20)

    def processes(self) -> list[str]:
        return sorted(
            self.process_colors, key=lambda n: (n != "lab", n != "api", worker_sort_key(n))
        )

    def _styled(self, name: str, line: str) -> Text:
        color = self.process_colors.setdefault(name, PROCESS_COLORS[len(self.process_colors) % 7])
        # "12:00:01.234 INFO    w1: started ..." -> "12:00:01.234 started ...": the name is in
        # the margin already, and only levels above INFO are worth the width.
        line = shorten_job_ids(_INFO.sub(r"\1", line))
        level = "bold red" if "ERROR" in line else "yellow" if "WARNING" in line else ""
        return Text.assemble((f"{name:>4} ", f"bold {color}"), (line, level))

    def add(self, name: str, line: str) -> None:
        self.lines.append((name, line))
        styled = self._styled(name, line)
        if not self.process or self.process == name:
            self.query_one(RichLog).write(styled)

    def watch_process(self, process: str) -> None:
        """Show again what was kept, through the new filter."""
        log = self.query_one(RichLog)
        log.clear()
        for name, line in self.lines:
            if not process or process == name:
                log.write(self._styled(name, line))
        self.border_title = f"log: {process or 'all processes'}"


def seconds_text(seconds: float) -> str:
    """A short wait: 0.4s, 12s, 3m."""
    seconds = max(0.0, seconds)
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def failures_line(frame: Frame) -> Text:
    """Retrying and dead jobs (PostgreSQL), retries waiting out their backoff (Redis) with the
    next one's due time, dead letters on the list."""
    retrying, dead = frame.jobs.get("retrying", 0), frame.jobs.get("dead", 0)
    line = Text.assemble(
        "retrying ", (str(retrying), "bold yellow" if retrying else "bold"),
        "  delayed ", (str(frame.delayed), "bold"),
    )  # fmt: skip
    if frame.next_retry_in is not None:
        line.append_text(
            Text.assemble(" (next in ", (seconds_text(frame.next_retry_in), "bold"), ")")
        )
    line.append_text(Text.assemble("  dead ", (str(dead), "bold red" if dead else "bold")))
    line.append_text(Text.assemble("  letters ", (str(frame.dead_letters), "bold")))
    return line


def faults_line(fail_rate: float, poison_share: float) -> Text:
    """The failure rate the lab's workers run with (every attempt they make, queued jobs
    included), the poison share of the next batches, and the keys that change them."""
    rate = (f"{fail_rate:.0%}", "bold yellow" if fail_rate else "bold")
    poison = (f"{poison_share:.0%}", "bold yellow" if poison_share else "bold")
    return Text.assemble(
        "workers fail ", rate, " of attempts", (" e", "dim"),
        "  next batches ", poison, " poison", (" P", "dim"),
    )  # fmt: skip


class FailuresPanel(Vertical):
    """Kata 4 at a glance: retrying, delayed (next due) and dead counts, the workers' failure
    rate and the next batches' poison share, and the latest dead letters with their reasons."""

    BORDER_TITLE = "failures"
    frame: var[Frame | None] = var(None)
    faults: reactive[tuple[float, float]] = reactive((0.0, 0.0))

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._shown: dict[str, object] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="failures-counts")
        yield Static(id="dead-letters")

    def _put(self, widget_id: str, key: object, content: Text | Table) -> None:
        if self._shown.get(widget_id) != key:
            self._shown[widget_id] = key
            self.query_one(f"#{widget_id}", Static).update(content)

    def watch_faults(self, faults: tuple[float, float]) -> None:
        # On the border: a line of its own pushed the experiments below the fold at 80x24.
        self.border_subtitle = faults_line(*faults)

    def watch_frame(self, frame: Frame | None) -> None:
        if frame is None:
            return
        line = failures_line(frame)
        self._put("failures-counts", line, line)
        letters = self.query_one("#dead-letters", Static)
        letters.display = bool(frame.dead)
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(no_wrap=True, style="bold red")
        table.add_column(no_wrap=True, style="dim")
        table.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        for letter in frame.dead:
            table.add_row(letter.job or "(no job)", letter.worker or "-", letter.reason)
        self._put("dead-letters", frame.dead, table)
