"""The TUI's pure parts: what the source derives from samples, what the timeline draws."""

from __future__ import annotations

import collections

from mqlab.experiments import load
from mqlab.protocol.ids import short_job_id, worker_sort_key
from mqlab.tui.app import LabApp
from mqlab.tui.fixed import NOW, FixedLab, FixedSource, fixed_frame
from mqlab.tui.keys_bar import KeysBar
from mqlab.tui.main import timeline_window
from mqlab.tui.model import JobBar
from mqlab.tui.source import depth_bins, redact, trend
from mqlab.tui.timeline import lanes, render_lane


def test_short_job_and_redact() -> None:
    assert short_job_id("job-12-1700000000000") == "job-12"
    assert short_job_id("custom-id") == "custom-id"
    assert redact("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("postgresql://me:pw@db/x") == "postgresql://me:***@db/x"
    assert redact("unix:///tmp/redis.sock?db=0") == "unix:///tmp/redis.sock?db=0"


def test_worker_order_is_numeric() -> None:
    assert sorted(["w10", "w2", "other", "w1"], key=worker_sort_key) == ["w1", "w2", "w10", "other"]


def test_trend_compares_with_a_second_ago() -> None:
    history = collections.deque([(100.0, 5), (100.5, 5), (101.2, 8)])
    assert trend(history, 101.2) == 1  # 8 now, 5 at 100.0 (the last sample >= 1 s old)
    history.append((102.5, 2))
    assert trend(history, 102.5) == -1
    assert trend(collections.deque([(100.0, 3)]), 100.2) == 0  # nothing a second old yet


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
    frame = fixed_frame()
    assert list(lanes(frame)) == ["w1", "w2", "w3", "w4", "w5"]  # w5 is dead but has a bar
    assert frame.at == NOW


def test_timeline_window_follows_the_job_time() -> None:
    assert timeline_window(2.0) == 30.0
    assert timeline_window(0.1) == 10.0
    assert timeline_window(30.0) == 60.0


async def test_keys_wrap_onto_two_lines_when_narrow() -> None:
    app = LabApp(FixedSource(), FixedLab(load("kata3"), step_seconds=0.5))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        bar = app.query_one(KeysBar)
        narrow = bar.lines(78)
        assert len(narrow) == 2
        for line in narrow:
            assert sum(len(keys) + 1 + len(desc) + 2 for keys, desc, _ in line) - 2 <= 78
        assert len(bar.lines(158)) == 1
        keys = [k for line in narrow for k, _, _ in line]
        assert keys[0] == "f" and keys[-1] == "q" and "+-" in keys  # grouped: one entry
        await pilot.press("R")  # while a run is under way, only what is usable now shows
        assert app.running is not None
        shown = {action for line in bar.lines(158) for _, _, action in line}
        assert "fire" not in shown and "cancel_run" in shown
        await pilot.press("c")
        for _ in range(100):
            if app.running is None:
                break
            await pilot.pause(0.05)
        assert app.experiments_table().verdicts()["1 orden, 1 worker"] == "cancelled"
        assert "fire" in {action for line in bar.lines(158) for _, _, action in line}
