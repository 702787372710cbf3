"""Snapshot tests of the TUI fed by the fixed source: the same screen every run.

After a deliberate change of the look: `pytest tests/test_tui_snapshots.py --snapshot-update`,
then look at the new SVGs in tests/__snapshots__/ before committing them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from textual.pilot import Pilot

from mqlab.experiments import load
from mqlab.faces.tui.app import LabApp
from mqlab.faces.tui.experiments_panel import ExperimentsTable
from mqlab.faces.tui.fixed import FixedLab, FixedSource, two_hosts_frame
from mqlab.faces.tui.panels import LogPanel
from tests.helpers import eventually_async

SnapCompare = Callable[..., bool]


def fixed_app() -> LabApp:
    return LabApp(FixedSource(), FixedLab(load("kata3")))


async def settled(pilot: Pilot[None]) -> None:
    """Wait for what arrives from threads (the lab's first log lines) and a first frame."""
    app = pilot.app
    assert isinstance(app, LabApp)
    await eventually_async(
        lambda: len(app.query_one(LogPanel).lines) >= 3 and app.frame is not None,
        what="the fixed app's first log lines and frame",
    )
    await pilot.pause()


async def table_filled(pilot: Pilot[None]) -> None:
    await settled(pilot)
    await pilot.press("R")
    app = pilot.app
    assert isinstance(app, LabApp)
    await eventually_async(
        lambda: (
            app.running is None and "" not in app.query_one(ExperimentsTable).verdicts().values()
        ),
        what="the end of the simulated run, every verdict shown",
    )
    app.clear_notifications()  # a toast fades on a timer: not part of a stable picture
    await pilot.pause()


def test_main_screen_80x24(snap_compare: SnapCompare) -> None:
    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=settled)


def test_main_screen_160x48(snap_compare: SnapCompare) -> None:
    assert snap_compare(fixed_app(), terminal_size=(160, 48), run_before=settled)


@pytest.mark.slow
def test_experiments_filled_160x48(snap_compare: SnapCompare) -> None:
    assert snap_compare(fixed_app(), terminal_size=(160, 48), run_before=table_filled)


@pytest.mark.slow
def test_workers_on_two_hosts_80x24(snap_compare: SnapCompare) -> None:
    """Grouped by host, each host's line with its jobs/s: in the workers table and the
    timeline."""
    app = LabApp(FixedSource(two_hosts_frame()), FixedLab(load("kata3")))
    assert snap_compare(app, terminal_size=(80, 24), run_before=settled)


def test_workers_on_two_hosts_160x48(snap_compare: SnapCompare) -> None:
    app = LabApp(FixedSource(two_hosts_frame()), FixedLab(load("kata3")))
    assert snap_compare(app, terminal_size=(160, 48), run_before=settled)


def test_help_80x24(snap_compare: SnapCompare) -> None:
    assert snap_compare(fixed_app(), terminal_size=(80, 24), press=["question_mark"],
                        run_before=settled)  # fmt: skip
