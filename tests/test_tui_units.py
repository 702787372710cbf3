"""The TUI's pure parts: what the source derives from samples, what the timeline draws."""

from __future__ import annotations

import collections
from dataclasses import replace

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from mqlab.experiments import load
from mqlab.faces.tui.app import FAIL_RATES, POISON_SHARES, LabApp, next_in
from mqlab.faces.tui.experiments_panel import ExperimentsPanel
from mqlab.faces.tui.fixed import NOW, FixedLab, FixedSource, fixed_frame
from mqlab.faces.tui.keys_bar import KeysBar
from mqlab.faces.tui.lab import split_batch
from mqlab.faces.tui.lanes import (
    BACKOFF_MARK,
    CUT_MARK,
    DEAD_MARK,
    FAILED_MARK,
    KILL_MARK,
    RETRY_MARK,
    lanes,
    render_lane,
)
from mqlab.faces.tui.main import timeline_window
from mqlab.faces.tui.model import JobBar, WorkerRow
from mqlab.faces.tui.panels import ID_WIDTH, FailuresPanel, LogPanel, QueuePanel, short_id
from mqlab.faces.tui.screens import HELP, ConfirmScreen
from mqlab.faces.tui.source import LiveSource, depth_bins, trend
from mqlab.lab.stack import NotOurServer, Stack
from mqlab.protocol.events import WorkerState
from mqlab.protocol.ids import short_job_id, worker_sort_key
from mqlab.system.redis_clients import redact


def test_short_job_and_redact() -> None:
    assert short_job_id("job-12-1700000000000") == "job-12"
    assert short_job_id("custom-id") == "custom-id"
    assert redact("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("postgresql://me:pw@db/x") == "postgresql://me:***@db/x"
    assert redact("unix:///tmp/redis.sock?db=0") == "unix:///tmp/redis.sock?db=0"


def test_worker_order_is_numeric() -> None:
    assert sorted(["w10", "w2", "other", "w1"], key=worker_sort_key) == ["w1", "w2", "w10", "other"]


def test_trend_is_the_last_move_of_the_last_seconds() -> None:
    # A burst of 10 drained in waves a job time (2 s) apart, sampled 5 times a second.
    history: collections.deque[tuple[float, int]] = collections.deque()
    seen = {}
    for tick in range(70):
        at = 100.0 + tick * 0.2
        depth = 0 if at < 101 else 10 if at < 103 else 6 if at < 105 else 2 if at < 107 else 0
        history.append((at, depth))
        seen[round(at, 1)] = trend(history, at)
    assert seen[100.8] == 0  # empty and still
    assert seen[101.0] == 1 and seen[102.8] == 1  # the burst, until the first wave
    # Falling all the way down, also between two waves (no step for 2 s).
    assert all(seen[round(100.0 + t * 0.2, 1)] == -1 for t in range(15, 35))
    assert seen[111.8] == -1  # down to 0 at 107: still the last move 4.8 s later
    assert seen[112.0] == 0 and seen[113.8] == 0  # then steady


def test_depth_bins_cover_the_last_minute() -> None:
    now = 1000.0
    bins = depth_bins(collections.deque([(now - 70, 9), (now - 59.9, 4), (now - 0.1, 7)]), now)
    assert len(bins) == 120
    assert bins[0] == 4 and bins[-1] == 7 and max(bins[1:-1]) == 0  # -70 s is out


def test_a_lane_shows_each_job_where_it_ran() -> None:
    start, span, width = 0.0, 10.0, 20  # half a second per cell
    bars = [
        JobBar("w1", "job-1", 1, 1.0, 3.0),
        JobBar("w1", "job-2", 2, 3.0, 5.0),
        JobBar("w1", "job-3", 3, 9.0, None),
    ]
    text = render_lane(bars, start, span, width, now=10.0)
    plain = text.plain
    assert len(plain) == width
    assert plain[:2] == "··" and plain[10:18] == "·" * 8  # idle time
    assert plain[2:6] == "█#1█" and plain[6:10] == "█#2█"  # two jobs, labelled
    assert plain[18:] == "▓▓"  # the running one
    # Consecutive jobs get different colors, so that the boundary shows.
    styles = {span.start: span.style for span in text.spans}
    assert styles[2] != styles[6]


def test_lanes_keep_live_workers_and_those_with_bars() -> None:
    shown = lanes(fixed_frame())
    # w5 is dead but has a bar; another terminal's worker is shortened and marked.
    assert [lane.label for lane in shown] == ["w1", "w2", "w3", "w4", "w5", "lab…114*"]
    assert [lane.alive for lane in shown] == [True, True, True, True, False, True]


def test_a_worker_id_used_again_gets_a_lane_per_process() -> None:
    frame = replace(
        fixed_frame(),
        workers=(WorkerRow("w1", 200, "busy", "job-2", 0.5, 0),),
        bars=(
            JobBar("w1", "job-1", 1, NOW - 9, NOW - 8, pid=100, cut=True),  # killed
            JobBar("w1", "job-2", 2, NOW - 0.5, None, pid=200),
        ),
        kills=(),
    )
    old, new = lanes(frame)
    assert (old.label, old.alive, [b.job for b in old.bars]) == ("w1", False, ["job-1"])
    assert (new.label, new.alive, [b.job for b in new.bars]) == ("w1", True, ["job-2"])


def test_a_cut_job_ends_with_a_mark_a_completed_one_does_not() -> None:
    done = render_lane([JobBar("w1", "job-1", 1, 1.0, 3.0)], 0.0, 10.0, 20, now=10.0).plain
    cut = render_lane([JobBar("w1", "job-1", 1, 1.0, 3.0, cut=True)], 0.0, 10.0, 20, 10.0)
    assert done[2:6] == "█#1█" and CUT_MARK not in done
    assert cut.plain[2:6] == "█#1" + CUT_MARK and cut.plain.count(CUT_MARK) == 1


def test_short_ids_keep_the_foreign_mark() -> None:
    assert short_id("w12", ours=True) == "w12"
    assert short_id("w12", ours=False) == "w12*"
    assert short_id("lab-vm-52114", ours=False) == "lab…114*"
    assert short_id("lab-vm-52114", ours=True) == "lab…2114"
    assert len(short_id("x" * 40, ours=False)) == ID_WIDTH


def test_timeline_window_follows_the_job_time() -> None:
    assert timeline_window(2.0) == 30.0
    assert timeline_window(0.1) == 10.0
    assert timeline_window(30.0) == 60.0


@pytest.mark.slow
async def test_keys_fit_one_line_help_and_quit_always() -> None:
    app = LabApp(FixedSource(), FixedLab(load("kata3"), step_seconds=0.5))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        bar = app.query_one(KeysBar)
        assert bar.size.height == 1
        narrow, wide = bar.fitted(78), bar.fitted(158)
        assert sum(len(keys) + 1 + len(desc) + 2 for keys, desc, _ in narrow) - 2 <= 78
        keys = [k for k, _, _ in narrow]
        assert keys[0] == "f" and keys[-2:] == ["?", "q"] and "+-" in keys  # grouped: one
        left_out = {a for _, _, a in wide} - {a for _, _, a in narrow}
        assert left_out and {"help", "quit"}.isdisjoint(left_out)
        help_text = HELP.replace("`", "")
        assert all(f"| {k} " in help_text or f"| {k}," in help_text for k, _, a in wide
                   if a in left_out)  # fmt: skip
        await pilot.press("R")  # while a run is under way, only what is usable now shows
        assert app.running is not None
        shown = {action for _, _, action in bar.fitted(158)}
        assert "fire" not in shown and "cancel_run" in shown
        await pilot.press("c")
        for _ in range(100):
            if app.running is None:
                break
            await pilot.pause(0.05)
        assert app.experiments_table().verdicts()["1 orden, 1 worker"] == "cancelled"
        assert "fire" in {action for _, _, action in bar.fitted(158)}


def test_the_source_gives_each_process_its_bars_and_cuts_what_a_kill_left_open() -> None:
    """Events as the worker writes them, folded by the live source (no server needed)."""
    source = LiveSource(lab=None, timeline_seconds=30.0)  # type: ignore[arg-type]
    for fields in (
        {"type": "worker_up", "worker": "w1", "pid": "100", "at": "1.0"},
        {"type": "job_started", "worker": "w1", "job": "job-1-1700000000000", "order": "1",
         "at": "2.0"},
        {"type": "job_finished", "worker": "w1", "job": "job-1-1700000000000", "order": "1",
         "at": "4.0"},
        {"type": "job_started", "worker": "w1", "job": "job-2-1700000000000", "order": "2",
         "at": "4.5"},
        # SIGKILLed mid-job: no event; a new process takes the id.
        {"type": "worker_up", "worker": "w1", "pid": "200", "at": "6.0"},
        {"type": "job_started", "worker": "w1", "job": "job-3-1700000000000", "order": "3",
         "at": "7.0"},
    ):  # fmt: skip
        source._apply(fields)
    bars = source._timeline((WorkerRow("w1", 200, "busy", "job-3", 1.0, 0),), now=8.0)
    assert [(b.job, b.pid, b.end, b.cut) for b in bars] == [
        ("job-1", 100, 4.0, False),
        ("job-2", 100, 6.0, True),
        ("job-3", 200, None, False),
    ]
    frame = replace(fixed_frame(), at=8.0, workers=(WorkerRow("w1", 200, "busy", "", 1, 0),),
                    bars=bars, kills=())  # fmt: skip
    assert [[b.job for b in lane.bars] for lane in lanes(frame)] == [["job-1", "job-2"], ["job-3"]]


async def test_the_counts_line_adds_the_attempts_that_did_not_simply_complete() -> None:
    """Read from job_attempts: failed attempts, crashes and reclaims show once there are any."""
    frame = replace(
        fixed_frame(),
        orders={"pending": 1, "processing": 0, "retrying": 2, "completed": 7, "failed": 1},
        attempts={"completed": 7, "failed": 5, "crashed": 1},
    )
    app = LabApp(FixedSource(frame), FixedLab(load("kata3")))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        panel = app.query_one(QueuePanel)
        text = panel._shown["counts"].plain
        assert "retrying 2" in text and "failed 1" in text
        assert "failed attempts 5" in text and "crashed 1" in text and "reclaimed" not in text


def test_failure_marks_on_a_lane() -> None:
    """A failed attempt ends with its mark and its backoff runs on; a retry starts with its
    mark; a dead end and a SIGKILL have theirs (0.5 s a cell)."""
    bars = [
        JobBar("w1", "job-1", 1, 1.0, 2.0, ending="failed", retry_in=2.0),
        JobBar("w1", "job-1", 1, 6.0, 7.0, attempt=2),
        JobBar("w1", "job-2", 2, 7.5, 8.0, ending="dead"),
    ]
    plain = render_lane(bars, 0.0, 10.0, 20, now=10.0, kills=(9.0,)).plain
    assert plain[2:4] == "█" + FAILED_MARK
    assert plain[4:8] == BACKOFF_MARK * 4  # 2 s of backoff after the failure
    assert plain[8:12] == "····"
    assert plain[12] == RETRY_MARK and plain[13] == "█"
    assert plain[15] == DEAD_MARK
    assert plain[18] == KILL_MARK
    assert len({CUT_MARK, FAILED_MARK, BACKOFF_MARK, RETRY_MARK, DEAD_MARK, KILL_MARK}) == 6
    help_text = HELP
    assert all(
        m in help_text for m in (FAILED_MARK, BACKOFF_MARK, RETRY_MARK, DEAD_MARK, KILL_MARK)
    )


def test_the_source_folds_failed_and_dead_attempts() -> None:
    source = LiveSource(lab=None, timeline_seconds=30.0)  # type: ignore[arg-type]
    for fields in (
        {"type": "worker_up", "worker": "w1", "pid": "100", "at": "1.0"},
        {"type": "job_started", "worker": "w1", "job": "job-1-1", "order": "1", "attempt": "1",
         "at": "2.0"},
        {"type": "job_failed", "worker": "w1", "job": "job-1-1", "order": "1", "attempt": "1",
         "error": "boom", "delay": "1.5", "at": "3.0"},
        {"type": "job_started", "worker": "w1", "job": "job-1-1", "order": "1", "attempt": "2",
         "at": "5.0"},
        {"type": "job_dead", "worker": "w1", "job": "job-1-1", "order": "1", "attempt": "2",
         "reason": "poison", "at": "5.5"},
    ):  # fmt: skip
        source._apply(fields)
    bars = source._timeline((WorkerRow("w1", 100, "idle", "", None, 0),), now=6.0)
    assert [(b.attempt, b.ending, b.retry_in, b.cut) for b in bars] == [
        (1, "failed", 1.5, False),
        (2, "dead", 0.0, False),
    ]


def test_a_job_taken_before_the_first_beat_is_on_its_process_lane() -> None:
    """A row starts its worker and fires at once: the first job_started came before any
    heartbeat or worker_up was read, its bar had pid 0, and once that process was gone the
    bar got a lane of its own: the lane label showed w2 twice."""

    class Child:
        name, kind, pid = "w2", "worker", 4242

    class Lab:
        def children(self) -> list[Child]:
            return [Child()]

    source = LiveSource(lab=Lab(), timeline_seconds=30.0)  # type: ignore[arg-type]
    source._apply({"type": "job_started", "worker": "w2", "job": "job-1-1", "order": "1",
                   "at": "2.0"})  # fmt: skip
    source._apply({"type": "job_finished", "worker": "w2", "job": "job-1-1", "at": "2.5"})
    bars = source._timeline((), now=6.0)
    assert [(b.worker, b.pid, b.cut) for b in bars] == [("w2", 4242, False)]


def test_next_in_cycles() -> None:
    assert [next_in(FAIL_RATES, r) for r in FAIL_RATES] == [0.1, 0.3, 0.5, 0.0]
    assert next_in(POISON_SHARES, 0.3) == 0.0 and next_in(POISON_SHARES, 0.77) == 0.0


def test_a_batch_splits_into_plain_and_poison() -> None:
    assert split_batch(10, 0.0) == (10, 0)
    assert split_batch(10, 0.3) == (7, 3)
    assert split_batch(1, 0.1) == (0, 1)  # a share above 0 shows at least one
    assert split_batch(0, 0.3) == (0, 0)


async def test_at_80x24_the_experiments_panel_starts_in_view_with_its_rows() -> None:
    """It sat below the fold until `R` scrolled it into view: the lab as it starts, one idle
    worker, nothing failed yet."""
    start = replace(
        fixed_frame(), workers=(WorkerRow("w1", 41001, WorkerState.IDLE, "", None, 0),),
        bars=(), kills=(), dead=(), delayed=0, next_retry_in=None, orders={}, jobs={},
    )  # fmt: skip
    app = LabApp(FixedSource(start), FixedLab(load("kata3")))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        panel = app.query_one(ExperimentsPanel)
        assert panel.region.y + 6 <= 23, panel.region  # its border, header and three rows


@pytest.mark.slow
async def test_the_footer_shows_what_works_during_a_run_and_the_cursor_leaves_a_killed_worker() -> (
    None
):
    """During `R` it offered +- Batch, P Poison and / Log, which did nothing then; after `k`
    the cursor stayed on the dead worker and `s`/`k` left the footer with no hint."""
    source = FixedSource()
    app = LabApp(source, FixedLab(load("kata3")))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for action in ("batch", "poison", "filter_log", "fire"):
            assert app.check_action(action, ())
        app.query_one(ExperimentsPanel).running = list(load("kata3").rows)
        for action in ("batch", "poison", "filter_log", "fire", "add_worker"):
            assert not app.check_action(action, ()), action
        assert app.check_action("cancel_run", ()) and app.check_action("pause", ())
        app.query_one(ExperimentsPanel).running = None
        # The worker under the cursor dies (`k`): the cursor moves on to a live one of the lab's.
        first = app.selected_worker()
        assert first is not None and first.state != WorkerState.DEAD
        frame = source.frame
        source.frame = replace(frame, workers=tuple(
            replace(w, state=WorkerState.DEAD) if w.id == first.id else w for w in frame.workers
        ))  # fmt: skip
        for _ in range(20):
            await pilot.pause(0.1)
            now = app.selected_worker()
            if now is not None and now.id != first.id:
                break
        now = app.selected_worker()
        assert now is not None and now.id != first.id
        assert now.ours and now.state != WorkerState.DEAD
        assert app.check_action("kill_worker", ()) and app.check_action("stop_worker", ())

    lab = FixedLab(load("kata3"))
    app = LabApp(FixedSource(), lab)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        panel = app.query_one(FailuresPanel)
        text = panel.query_one("#failures-counts", Static).render()
        assert "retrying 2" in str(text) and "dead 1" in str(text) and "next in 1.4s" in str(text)
        await pilot.press("e")
        await wait_until_calls(pilot, lab, "fail rate 0.1")
        await pilot.press("P", "P")
        assert lab.poison_share == 0.3 and panel.faults == (0.1, 0.3)
        assert "next batches 30% poison" in panel._border_subtitle.plain  # type: ignore[union-attr]
        await pilot.press("L")
        await wait_until_calls(pilot, lab, "replay")
        await pilot.press("F")  # asks first: no, then yes
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.press("D", "y")
        await wait_until_calls(pilot, lab, "stop postgres 3")
        assert "flush redis" not in lab.calls
        await pilot.press("F", "y")
        await wait_until_calls(pilot, lab, "flush redis")
        # Not the lab's own PostgreSQL: a clear message, no question, nothing stopped.
        lab.postgres_refusal = "PostgreSQL is not the embedded server this lab started"
        await pilot.press("D")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert lab.calls.count("stop postgres 3") == 1
        assert any("not the embedded" in line for _, line in app.query_one(LogPanel).lines)


async def wait_until_calls(pilot: Pilot[None], lab: FixedLab, call: str) -> None:
    for _ in range(100):
        if call in lab.calls:
            return
        await pilot.pause(0.05)
    raise AssertionError(f"{call!r} not in {lab.calls}")


def test_postgresql_is_stopped_only_when_the_lab_started_it() -> None:
    """A server given by URL (a person's, or the tests') is never stopped: a clear refusal."""
    stack = Stack("redis://127.0.0.1:1/0", "postgresql://u:p@127.0.0.1:1/x")
    why = stack.postgres_stoppable()
    assert why is not None and "only its own" in why
    with pytest.raises(NotOurServer, match="not the embedded server"):
        stack.stop_postgres(0.1)


def test_a_finished_runs_note_fits_the_top_bar_at_80_columns() -> None:
    """It listed every row with its verdict and was cut ("10 órdenes, 4 wor…")."""
    from mqlab.faces.tui.experiments_panel import verdict_note
    from tests.results_data import kata

    passed = verdict_note(kata([2.01, 10.02, 6.02], [3.0] * 16))
    assert passed == "kata3 PASS: 3 ok, API ok"
    slow = verdict_note(kata([2.01, 10.5, 6.02], [3.0] * 16))
    assert slow == "kata3 FAIL: 2 ok, 1 slow, API ok (5 órdenes, 1 worker)"
    assert len(slow) < 60
