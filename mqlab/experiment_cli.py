"""`mqlab run-experiment`: run suites headless with a live progress display, then report."""

from __future__ import annotations

import asyncio
import math
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from mqlab.experiments import ExperimentError, Suite, experiments_dir, load
from mqlab.interrupts import sigterm_as_ctrl_c
from mqlab.report import write
from mqlab.results import SuiteResult
from mqlab.runner import ForeignWorkers, Progress, Runner
from mqlab.services.manager import ServicesError
from mqlab.stack import Stack
from mqlab.supervisor import ChildFailed


class _Display:
    """The live progress line: row, orders done / total, elapsed, queue depth."""

    def __init__(self) -> None:
        self.progress: Progress | None = None

    def update(self, progress: Progress) -> None:
        self.progress = progress

    def __rich__(self) -> Table:
        table = Table.grid(padding=(0, 2))
        p = self.progress
        if p is None:
            table.add_row("starting the API and the workers ...")
            return table
        bar_width = 30
        filled = 0 if not p.total else round(bar_width * p.done / p.total)
        bar = "█" * filled + "·" * (bar_width - filled)
        phase = {"workers": "starting workers", "firing": "firing orders"}.get(p.phase, p.phase)
        table.add_row(
            f"[bold]{p.suite}[/] row {p.row_index}/{p.rows}: {p.row.name}",
            f"run {p.run}/{p.runs}",
            f"{bar} {p.done}/{p.total} done",
            f"{p.elapsed:5.2f} s",
            f"queue {p.queue_depth}",
            f"[dim]{phase}[/]",
        )
        return table


def summary_table(result: SuiteResult) -> Table:
    table = Table(title=f"{result.suite.title}", title_justify="left")
    for col in ("row", "expected", "ideal", "measured", "overhead", "verdict"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for r in result.rows:
        style = {"ok": "green", "measured": "cyan", "slow": "yellow", "fail": "red"}[r.verdict]
        expected = "-" if r.row.expected_seconds is None else f"{r.row.expected_seconds:g} s"
        measured = "-" if math.isnan(r.makespan) else f"{r.makespan:.3f} s"
        table.add_row(
            r.row.name,
            expected,
            f"{r.row.ideal_seconds:g} s",
            measured,
            f"{r.overhead * 1000:+.0f} ms",
            f"[{style}]{r.verdict}[/]",
        )
    if result.api is not None:
        lat = result.api.latency_ms
        style = {"ok": "green", "slow": "yellow", "fail": "red"}[result.api.verdict]
        table.add_row(
            "API responds (202)",
            "at once",
            "",
            f"p50 {lat.get('p50', math.nan):.1f} ms",
            f"max {lat.get('max', math.nan):.1f} ms",
            f"[{style}]{result.api.verdict}[/]",
        )
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
    try:
        with sigterm_as_ctrl_c(), Stack(redis_url, database_url) as stack:
            assert stack.settings is not None and stack.sup is not None
            for suite in suites:
                display = _Display()
                # Redrawn from the progress callback only (no refresh thread): a render that
                # holds the GIL while a burst is in flight would delay the load generator.
                with Live(display, console=console, auto_refresh=False, transient=True) as live:

                    def show(
                        progress: Progress, live: Live = live, display: _Display = display
                    ) -> None:
                        display.update(progress)
                        live.refresh()

                    runner = Runner(stack.settings, stack.sup, on_progress=show)
                    result = asyncio.run(runner.run_suite(suite, repeat=repeat))
                written = write(result, out_dir, stack.versions(), command)
                console.print(summary_table(result))
                console.print(f"Report: [bold]{written.markdown}[/] (and {written.json.name})")
                for problem in result.failures():
                    console.print(f"[red]x[/] {problem}")
                if not result.passed:
                    failed.append(suite.name)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: every process this run started was stopped.")
        return 130
    except (ServicesError, ForeignWorkers, ChildFailed) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    if failed:
        console.print(f"[bold red]FAIL[/]: {', '.join(failed)} (see the report for why)")
        return 1
    console.print("[bold green]PASS[/]: every row within its tolerance, every order answered 202.")
    return 0
