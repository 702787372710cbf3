"""What `mqlab tui` runs: a LiveLab and its LiveSource under the app, and a final sweep."""

from __future__ import annotations

from mqlab.experiments import load
from mqlab.faces.tui.app import LabApp
from mqlab.faces.tui.lab import LiveLab
from mqlab.faces.tui.source import LiveSource
from mqlab.lab.interrupts import sigterm_as_ctrl_c

KATA_JOB_SECONDS = 2.0


def timeline_window(job_seconds: float) -> float:
    """Seconds of the timeline: about 15 jobs wide, so waves show at any job time."""
    return min(60.0, max(10.0, 15 * job_seconds))


def build(
    workers: int = 1,
    job_seconds: float | None = None,
    suite: str = "kata3",
    redis_url: str | None = None,
    database_url: str | None = None,
    handle_signals: bool = True,
) -> tuple[LabApp, LiveLab]:
    """The app on a live lab. With job_seconds, the experiments table runs at that job time
    too (expected times scale), so the kata's table can be run in seconds. handle_signals:
    SIGTERM quits the app (off in tests, where the process is pytest's)."""
    table = load(suite)
    if job_seconds is not None:
        table = table.with_job_seconds(job_seconds)
    seconds = KATA_JOB_SECONDS if job_seconds is None else job_seconds
    lab = LiveLab(table, workers, seconds, redis_url, database_url)
    source = LiveSource(lab, timeline_seconds=timeline_window(seconds))
    return LabApp(source, lab, handle_signals=handle_signals), lab


def run(
    workers: int = 1,
    job_seconds: float | None = None,
    suite: str = "kata3",
    redis_url: str | None = None,
    database_url: str | None = None,
) -> int:
    """Run the TUI until the person quits; returns the exit code (1 if the stack failed)."""
    app, lab = build(workers, job_seconds, suite, redis_url, database_url)
    # Once mounted, the app's own loop handler takes SIGTERM the way `q` goes (a
    # KeyboardInterrupt inside Textual's loop would skip its way out); before that, SIGTERM
    # unwinds like Ctrl-C, through the finally.
    with sigterm_as_ctrl_c():
        try:
            app.run()
        except KeyboardInterrupt:
            return 130
        finally:
            # Whatever ended the app (q, Ctrl-C, SIGTERM, a crash): nothing it started survives.
            lab.close()
    return 1 if lab.error else 0
