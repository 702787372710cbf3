"""The TUI driven with Textual's Pilot against the real stack (Redis, PostgreSQL, API, workers)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest
from textual.pilot import Pilot
from textual.worker import WorkerFailed

from mqlab.faces.tui.app import LabApp
from mqlab.faces.tui.experiments_panel import ExperimentsTable
from mqlab.faces.tui.lab import LiveLab
from mqlab.faces.tui.main import build
from mqlab.faces.tui.model import Frame, WorkerRow
from mqlab.faces.tui.panels import LogPanel, QueuePanel, WorkersTable
from mqlab.faces.tui.screens import ConfirmScreen
from mqlab.lab.supervisor import Supervisor
from mqlab.settings import Settings
from mqlab.system.spec import WorkerSpec
from tests.helpers import eventually_async

SIZE = (160, 48)


async def select(table: WorkersTable, worker_id: str, pid: int) -> None:
    """Put the cursor on our worker's row, and see it there (the table refreshes 5 times a
    second; a key pressed on another row, or on a foreign worker of the same id, would act on
    that one)."""

    def on_it() -> bool:
        table.move_cursor(row=table.get_row_index(worker_id))
        row = table.selected()
        return row is not None and row.id == worker_id and row.pid == pid and row.ours

    await eventually_async(on_it, timeout=10)


def rows(app: LabApp) -> dict[str, WorkerRow]:
    """The workers table as shown (WorkersTable keeps the rows it drew, by worker id)."""
    return dict(app.query_one(WorkersTable).rows_shown)


def shown(app: LabApp, worker: str, column: str) -> str:
    return str(app.query_one(WorkersTable).get_cell(worker, column))


def frame(app: LabApp) -> Frame:
    current = app.query_one(QueuePanel).frame
    assert current is not None
    return current


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def lab_app(settings: Settings, clean: None) -> Iterator[tuple[LabApp, LiveLab, set[int]]]:
    """The TUI on the test servers with 2 workers at 0.3 s per job; after the test, every
    process it started (recorded in `pids` as they appear) must be gone."""
    app, lab = build(
        workers=2,
        job_seconds=0.3,
        redis_url=settings.redis_url,
        database_url=settings.database_url,
        handle_signals=False,
    )
    pids: set[int] = set()
    yield app, lab, pids
    try:
        pids |= {c.pid for c in lab.children()}
        # Looked at before our own sweep below: the app must have stopped them itself.
        left = [pid for pid in pids if running(pid)]
    finally:
        lab.close()
    assert not left, "processes left running after the app ended"


async def started(pilot: Pilot[None], lab: LiveLab, workers: int = 2) -> None:
    def ready() -> bool:
        shown = rows(pilot.app)  # type: ignore[arg-type]
        return lab.state == "up" and sum(r.state == "idle" for r in shown.values()) == workers

    await eventually_async(ready, timeout=60)


@pytest.mark.slow
async def test_fire_ten_orders_depth_rises_and_falls(
    lab_app: tuple[LabApp, LiveLab, set[int]],
) -> None:
    """f fires ten orders: the queue's depth rises, then falls to 0 as two workers take them.

    Slow by design (about 6 s): a lab of its own, and ten jobs drained by two workers."""
    app, lab, pids = lab_app
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, lab)
        pids |= {c.pid for c in lab.children()}
        header = frame(app).services
        assert [s.up for s in header] == [True, True, True]
        assert header[2].url == lab.sup.api_url  # type: ignore[union-attr]
        for wid, child in (("w1", lab.sup.children["w1"]), ("w2", lab.sup.children["w2"])):  # type: ignore[union-attr]
            assert shown(app, wid, "pid") == str(child.pid)

        depths: list[int] = []

        def drained() -> bool:
            depths.append(frame(app).depth)
            done = sum(int(shown(app, w, "done")) for w in ("w1", "w2"))
            return max(depths) > 0 and depths[-1] == 0 and done == 10

        await pilot.press("f")
        await eventually_async(drained, timeout=30)
        assert max(depths) >= 2, f"the queue never filled: {depths}"
        counts = [int(shown(app, w, "done")) for w in ("w1", "w2")]
        assert sum(counts) == 10 and min(counts) >= 1, counts
        await eventually_async(lambda: frame(app).orders.get("completed") == 10, timeout=10)
        # The timeline drew the ten jobs, on both workers.
        bars = frame(app).bars
        assert len(bars) == 10 and {b.worker for b in bars} == {"w1", "w2"}
        log = app.query_one(LogPanel)
        assert any(name == "w1" and "completed job-" in line for name, line in log.lines)


@pytest.mark.slow
async def test_add_stop_and_kill_workers(lab_app: tuple[LabApp, LiveLab, set[int]]) -> None:
    """a adds a worker, k kills the selected one (after asking), s stops another.

    Slow by design (about 6 s): a lab of its own, and a worker's stop or kill is seen only
    at the TUI's next samples."""
    app, lab, pids = lab_app
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, lab)
        await pilot.press("a")
        await eventually_async(
            lambda: shown(app, "w3", "state") == "idle" if "w3" in rows(app) else False,
            timeout=30,
            what="the added worker w3 idle",
        )
        w3 = lab.sup.children["w3"]  # type: ignore[union-attr]
        pids.add(w3.pid)
        assert shown(app, "w3", "pid") == str(w3.pid)

        table = app.query_one(WorkersTable)
        table.focus()
        await select(table, "w3", w3.pid)
        await pilot.press("k")
        await eventually_async(lambda: isinstance(app.screen, ConfirmScreen), timeout=30)
        await pilot.press("y")
        await eventually_async(lambda: shown(app, "w3", "state") == "dead", timeout=15)
        assert shown(app, "w3", "job") == "SIGKILL"
        assert not w3.alive() and w3.proc.returncode == -9

        w1 = lab.sup.children["w1"]  # type: ignore[union-attr]
        await select(table, "w1", w1.pid)
        await eventually_async(lambda: app.check_action("stop_worker", ()), timeout=30)
        await pilot.press("s")
        await eventually_async(lambda: shown(app, "w1", "state") == "dead", timeout=15)
        assert shown(app, "w1", "job") == "exit 0"
        assert shown(app, "w2", "state") == "idle"
        # The cursor has left the worker that died for a live one, so `s` and `k` stay
        # offered; on a dead worker they are not (those keys leave the footer).
        await eventually_async(lambda: getattr(table.selected(), "id", "w1") != "w1", timeout=30)
        selected = table.selected()
        assert selected is not None and selected.state != "dead" and selected.ours
        assert app.check_action("kill_worker", ()) is True
        table.move_cursor(row=table.get_row_index("w1"))
        await eventually_async(lambda: getattr(table.selected(), "id", None) == "w1", timeout=30)
        assert app.check_action("kill_worker", ()) is False


@pytest.mark.slow
async def test_run_the_kata_table(lab_app: tuple[LabApp, LiveLab, set[int]]) -> None:
    """R runs the kata's rows: the experiments table fills with measured times and verdicts.

    Slow by design (about 12 s): the kata's three rows for real, with short jobs."""
    app, lab, pids = lab_app
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, lab)
        pids |= {c.pid for c in lab.children()}
        table = app.query_one(ExperimentsTable)
        await pilot.press("R")
        await eventually_async(lambda: app.running is not None, timeout=30)
        assert app.check_action("fire", ()) is False  # no stray orders during a measurement

        def finished() -> bool:
            pids.update(c.pid for c in lab.children())
            return app.running is None

        await eventually_async(finished, timeout=90)
        verdicts = table.verdicts()
        assert list(verdicts) == [r.name for r in lab.suite.rows]
        # ok or slow (a loaded machine): every order completed, none failed.
        assert set(verdicts.values()) <= {"ok", "slow"}, verdicts
        for index, row in enumerate(lab.suite.rows):
            measured = str(table.get_cell(str(index), "measured"))
            assert measured.endswith(" s") and float(measured[:-2]) >= row.ideal_seconds
        assert str(table.get_cell("api", "verdict")) in ("ok", "slow")
        # The manual workers were stopped; the runner's pool of the last row (4) stays up.
        await eventually_async(
            lambda: sum(r.state == "idle" for r in rows(app).values()) == 4, timeout=30
        )
        assert {"w1", "w2"} <= {r.id for r in rows(app).values() if r.state == "dead"}


@pytest.mark.slow
async def test_run_with_a_foreign_worker_refuses_before_stopping_ours(
    lab_app: tuple[LabApp, LiveLab, set[int]], sup: Supervisor
) -> None:
    """R with another terminal's worker running refuses, and the lab's own workers keep running
    (same processes).

    Slow by design (about 5 s): a lab of its own and a foreign worker."""
    app, lab, pids = lab_app
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, lab)
        ours = {c.name: c.pid for c in lab.children() if c.kind == "worker"}
        pids |= set(ours.values())
        # another terminal's worker
        sup.start_worker(WorkerSpec(worker_id="elsewhere", job_seconds=0.3))
        await eventually_async(lambda: "elsewhere" in rows(app), timeout=30)
        assert not rows(app)["elsewhere"].ours
        await pilot.press("R")
        await eventually_async(
            lambda: app.running is None and lab_said(app, "experiment:"), timeout=30
        )
        assert "elsewhere" in lab_said(app, "experiment:")
        # Our workers were left as they were: same processes, alive, never told to stop.
        assert {c.name: c.pid for c in lab.sup.workers()} == ours  # type: ignore[union-attr]
        assert not lab_said(app, "stopping")


@pytest.mark.slow
async def test_a_job_deleted_by_a_reset_is_logged_as_such(settings: Settings, clean: None) -> None:
    """Slow by design (about 4 s): the job must still be running when the reset comes."""
    app, lab = build(workers=1, job_seconds=4, redis_url=settings.redis_url,
                     database_url=settings.database_url, handle_signals=False)  # fmt: skip
    try:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot, lab, workers=1)
            await pilot.press("f")
            await eventually_async(
                lambda: rows(app).get("w1") and rows(app)["w1"].state == "busy", timeout=30
            )
            await pilot.press("X")
            await eventually_async(lambda: isinstance(app.screen, ConfirmScreen), timeout=30)
            await pilot.press("y")
            await eventually_async(lambda: worker_said(app, "w1", "was deleted"), timeout=20)
            assert not worker_said(app, "w1", "taken over")
    finally:
        lab.close()


def lab_said(app: LabApp, text: str) -> str:
    """The lab's own log lines that contain `text`, joined ("" if none)."""
    return worker_said(app, "lab", text)


def worker_said(app: LabApp, process: str, text: str) -> str:
    lines = app.query_one(LogPanel).lines
    return "\n".join(line for name, line in lines if name == process and text in line)


@pytest.mark.slow
async def test_quit_stops_every_child(lab_app: tuple[LabApp, LiveLab, set[int]]) -> None:
    """q stops the API and every worker the lab started.

    Slow by design (about 4 s): a lab of its own, started and stopped."""
    app, lab, pids = lab_app
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, lab)
        pids |= {c.pid for c in lab.children()}
        assert len(pids) == 3  # the API and two workers
        await pilot.press("q")
        await eventually_async(lambda: lab.state == "closed", timeout=30)
    assert all(not c.alive() for c in lab.children())


class _Crashing:
    """A source that fails once the lab is up: the app crashes, its children must not stay."""

    def __init__(self, inner: object, lab: LiveLab) -> None:
        self.inner, self.lab = inner, lab

    async def sample(self) -> Frame:
        if self.lab.state == "up":
            raise RuntimeError("boom")
        return await self.inner.sample()  # type: ignore[attr-defined,no-any-return]

    async def close(self) -> None:
        await self.inner.close()  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_a_crash_stops_every_child(lab_app: tuple[LabApp, LiveLab, set[int]]) -> None:
    """A failure inside the app ends it, and the lab's API and workers with it.

    Slow by design (about 4 s): a lab of its own, started for real."""
    app, lab, pids = lab_app
    app.source = _Crashing(app.source, lab)
    with pytest.raises(WorkerFailed, match="boom"):
        async with app.run_test(size=SIZE):
            await eventually_async(lambda: lab.state != "starting", timeout=60)
            # The failed sample ends the app (its unmount closes the lab, checked below).
            await eventually_async(lambda: app.shutting_down, timeout=30)
    assert lab.state == "closed"
    children = lab.children()
    pids |= {c.pid for c in children}
    assert len(children) == 3 and all(not c.alive() for c in children)


@pytest.mark.slow
async def test_quit_while_starting(lab_app: tuple[LabApp, LiveLab, set[int]]) -> None:
    app, lab, _ = lab_app
    began = time.monotonic()
    async with app.run_test(size=SIZE) as pilot:
        await eventually_async(lambda: bool(lab.children()), timeout=30)  # the API is starting
        assert lab.state == "starting"
        await pilot.press("q")
        await eventually_async(lambda: lab.state == "closed", timeout=30)
    # Not held up by the start it interrupted (the API's health wait alone is up to 30 s).
    assert time.monotonic() - began < 20
    assert lab.error == "" and all(not c.alive() for c in lab.children())
