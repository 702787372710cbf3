"""`mqlab run-experiment`: run suites headless with a live progress display, then report."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mqlab.experiments import ExperimentError, Suite, experiments_dir, load
from mqlab.figures.progress import Progress, ProgressHandler
from mqlab.figures.report import write
from mqlab.figures.results import SuiteResult, pass_words
from mqlab.figures.results_table import ledger_table
from mqlab.figures.results_table import table as table_rows
from mqlab.lab.hosts.lab import HostsUnavailable
from mqlab.lab.hosts.network import NetworkError
from mqlab.lab.hosts.network import available as hosts_available
from mqlab.lab.hosts.suite_run import run_on_hosts
from mqlab.lab.interrupts import sigterm_as_ctrl_c
from mqlab.lab.runner import ForeignWorkers, Runner
from mqlab.lab.scenarios import owned_postgres
from mqlab.lab.services.manager import ServicesError
from mqlab.lab.stack import Stack
from mqlab.lab.supervisor import ChildFailed


class ProgressLine:
    """The live progress line: row, orders done / total, elapsed, queue depth. One line at
    any width: the bar takes what the rest leaves (up to 30 columns), then the line is cut."""

    BAR_WIDTH = 30

    def __init__(self) -> None:
        self.progress: Progress | None = None

    def update(self, progress: Progress) -> None:
        self.progress = progress

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        p = self.progress
        if p is None:
            yield Text("starting the API and the workers ...")
            return
        phase = {"workers": "starting workers"}.get(p.phase, p.phase)
        where = Text.assemble((p.suite, "bold"), f" row {p.row_index}/{p.rows}: {p.row.name}")
        if p.runs > 1:
            where.append(f"  run {p.run}/{p.runs}")
        after = f"{p.done}/{p.total}  {p.elapsed:.1f} s  queue {p.queue_depth}  "
        room = options.max_width - len(where) - 2 - len(after) - len(phase) - 1
        width = max(0, min(self.BAR_WIDTH, room))  # no bar rather than a cut line
        filled = 0 if not p.total else round(width * p.done / p.total)
        bar = "█" * filled + "·" * (width - filled) + " " if width else ""
        line = Text.assemble(where, "  ", bar, after)
        line.append(phase, "dim")
        line.truncate(options.max_width, overflow="ellipsis")
        yield line


def summary_table(result: SuiteResult) -> Table:
    """The kata's table for a terminal: one line per row, within 80 columns (no outer frame,
    no rules between columns), never wider than its cells at a wider terminal."""
    table = Table(
        title=result.suite.title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
    )
    for col in ("row", "expected", "ideal", "measured", "overhead", "verdict"):
        # Cut, never wrapped: a folded cell would break the row over two lines.
        table.add_column(col, justify="left" if col in ("row", "verdict") else "right",
                         no_wrap=True, overflow="ellipsis")  # fmt: skip
    for t in table_rows(result):
        verdict = Text(t.verdict_text, style=t.style)
        table.add_row(t.name, t.expected, t.ideal, t.measured, t.overhead, verdict)
    return table


#: Widths the ledger's figures need: "14/0", "3.39/3.44 s", "skipped".
_MIN_WIDTH = {"2x": 5, "recovery": 11, "verdict": 7, "row": 8}


def ledger_summary(result: SuiteResult) -> Table | None:
    """Kata 4's ledger for a terminal, one line per row within 80 columns (None: no row has
    one). 2x = work run twice / completed twice; recovery = p50/max."""
    cells = ledger_table(result)
    if not cells:
        return None
    table = Table(title="The ledger", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, padding=(0, 1, 0, 0))  # fmt: skip
    heads = ("row", "202", "503", "done", "dead", "lost", "2x", "recovery", "verdict")
    for col in heads:
        # Figures keep their width (a header cut to "2…" says nothing); a long name is cut.
        table.add_column(col, justify="left" if col in ("row", "verdict") else "right",
                         no_wrap=True, overflow="ellipsis", min_width=_MIN_WIDTH.get(col, len(col)),
                         max_width=20 if col == "row" else None)  # fmt: skip
    for c in cells:
        verdict = Text(c.verdict_text, style=c.style)
        table.add_row(c.name, c.accepted, c.refused, c.completed, c.dead, c.lost, c.twice,
                      c.recovery, verdict)  # fmt: skip
    return table


def run(
    names: list[str],
    job_seconds: float | None,
    repeat: int,
    out: Path | None,
    redis_url: str | None,
    database_url: str | None,
    console: Console,
) -> int:
    """Run the suites; returns the exit code (0: every row within its tolerance)."""
    try:
        suites: list[Suite] = [load(n) for n in names]
    except ExperimentError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    if job_seconds is not None:
        suites = [s.with_job_seconds(job_seconds) for s in suites]
    out_dir = out or experiments_dir() / "results"
    command = "mqlab " + shlex.join(sys.argv[1:])
    failed: list[str] = []
    results: list[SuiteResult] = []
    try:
        with sigterm_as_ctrl_c(), contextlib.ExitStack() as exits:
            stack: Stack | None = None
            for suite in suites:
                if suite.hosts is not None:
                    if why := hosts_available():
                        console.print(f"[yellow]skipped[/] {suite.name}: {why}")
                        continue
                    with _live(console) as show:
                        result, versions = run_on_hosts(suite, repeat, show)
                else:
                    if stack is None:
                        stack = exits.enter_context(Stack(redis_url, database_url))
                    assert stack.settings is not None and stack.sup is not None
                    pg = owned_postgres(stack.servers)
                    runner = Runner(stack.settings, stack.sup, pg=pg)
                    result = _run_suite(runner, suite, repeat, console)
                    versions = stack.versions()
                results.append(result)
                written = write(result, out_dir, versions, command)
                console.print(summary_table(result))
                ledger = ledger_summary(result)
                if ledger is not None:
                    console.print(ledger)
                # Not wrapped by rich: a path cut in two by a newline cannot be copied whole.
                console.print(
                    f"Report: [bold]{written.latest}[/] (this run's: {written.markdown.name}, "
                    f"{written.json.name})",
                    soft_wrap=True,
                )
                for problem in result.failures():
                    console.print(f"[red]x[/] {problem}")
                if not result.passed:
                    failed.append(suite.name)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: every process this run started was stopped.")
        return 130
    except (ServicesError, ForeignWorkers, ChildFailed, HostsUnavailable, NetworkError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    if failed:
        console.print(f"[bold red]FAIL[/]: {', '.join(failed)} (see the report for why)")
        return 1
    if results:
        console.print(f"[bold green]PASS[/]: {pass_words([r for x in results for r in x.rows])}.")
    return 0


@contextlib.contextmanager
def _live(console: Console) -> Iterator[ProgressHandler]:
    """The live progress line while a suite runs, and the handler that redraws it: from the
    progress callback only, no refresh thread (a render that holds the GIL while a burst is
    in flight would delay the load generator)."""
    display = ProgressLine()
    with Live(display, console=console, auto_refresh=False, transient=True) as live:

        def show(progress: Progress) -> None:
            display.update(progress)
            live.refresh()

        yield show


def _run_suite(runner: Runner, suite: Suite, repeat: int, console: Console) -> SuiteResult:
    """One suite on one machine's stack, with its live progress line."""
    with _live(console) as show:
        runner.on_progress = show
        return asyncio.run(runner.run_suite(suite, repeat=repeat, leave_clean=True))
