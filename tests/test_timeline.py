"""The report's timelines draw attempts: a failure and its backoff, the retry, a crash with
the lab's kill, a dead end. Built from fixed data, as the runner records it."""

from __future__ import annotations

import math
import re

import pytest

from mqlab.figures import timeline
from mqlab.figures.ledger import Attempt
from mqlab.figures.results import JobTiming, RunResult
from tests.results_data import T0


def run_with_failures() -> RunResult:
    jobs = [
        JobTiming("job-1", 1, "w2", 2, T0, T0 + 0.35, T0 + 0.45, "completed"),
        JobTiming("job-2", 2, "w1", 2, T0, T0 + 0.5, T0 + 0.6, "dead"),
    ]
    history = [
        Attempt("job-1", 1, "w1", T0 + 0.0, T0 + 0.1, "failed", "x", T0 + 0.3),
        Attempt("job-2", 1, "w2", T0 + 0.05, T0 + 0.5, "crashed", None, None),
        Attempt("job-1", 2, "w2", T0 + 0.35, T0 + 0.45, "completed", None, None),
        Attempt("job-2", 2, "w1", T0 + 0.5, T0 + 0.6, "failed", "x", None),
    ]
    return RunResult([], jobs, T0, 0.1, False, ["w1", "w2"], history=history,
                     kills=[(T0 + 0.2, "w2")])  # fmt: skip


def test_the_text_timeline_marks_each_attempt_that_did_not_complete() -> None:
    lines = timeline.text(run_with_failures(), width=20).splitlines()
    assert lines[0].startswith("  w1 |") and lines[1].startswith("  w2 |")
    assert lines[0].endswith("#1 0.00-0.10s ✗, #2 0.50-0.60s †")
    # The crashed attempt ends at the kill, not when the next delivery found it (0.50 s).
    crash = f"#2 0.05-0.20s {timeline.CRASHED}"
    assert lines[1].endswith(f"{crash}, #1 0.35-0.45s, kill -9 at 0.20s")
    assert "▒" in lines[0] and "█" in lines[1]


def test_the_svg_draws_the_marks_the_backoff_and_the_kill() -> None:
    picture = timeline.svg(run_with_failures(), "faults")
    for mark in ("✗", "†", timeline.CRASHED):
        assert f'font-weight="bold">{mark}</text>' in picture
    assert 'stroke-dasharray="2,3"><title>backoff: due 0.200s after the failure' in picture
    assert "<title>kill -9 w2 at 0.200s</title>" in picture


def test_a_run_without_history_draws_its_jobs_as_before() -> None:
    run = run_with_failures()
    plain = RunResult([], run.jobs, T0, 0.1, False, ["w1", "w2"])
    lines = timeline.text(plain, width=20).splitlines()
    assert lines[0].endswith("#2 0.50-0.60s") and lines[1].endswith("#1 0.35-0.45s")


def test_a_crowded_run_draws_only_the_waits_of_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hundreds of orders queued at once would paint every lane pale from the start: above
    WAITS_SHOWN bars, only a retry's wait (from its due time) is drawn."""
    run = run_with_failures()
    assert timeline.svg(run, "t").count(": waiting ") == 4
    monkeypatch.setattr(timeline, "WAITS_SHOWN", 2)
    assert timeline.svg(run, "t").count(": waiting for its retry") == 1  # job 1's retry
    assert timeline.svg(run, "t").count(": waiting ") == 1


#: What one character of the SVG's 11-pixel monospace text takes, at most (DejaVu: 6.6 px).
CHAR = 7.0


def _texts(picture: str) -> list[tuple[float, str, str]]:
    """(x, anchor, words) of every <text> in an SVG."""
    found = re.findall(r'<text x="([\d.]+)"([^>]*)>([^<]*)</text>', picture)
    return [
        (float(x), "middle" if "middle" in rest else "start", words) for x, rest, words in found
    ]


def _inside(picture: str) -> None:
    width = float(re.search(r'<svg [^>]*width="([\d.]+)"', picture).group(1))
    for x, anchor, words in _texts(picture):
        half = len(words) * CHAR / 2
        left, right = (x - half, x + half) if anchor == "middle" else (x, x + 2 * half)
        assert left >= 0 and right <= width, f"{words!r} at {x} leaves the {width}-pixel picture"


@pytest.mark.parametrize("span", [0.004, 0.9, 2.008, 6.04, 6.2, 10.09, 14.3, 95.0, 3601.0])
def test_ticks_fall_on_round_values_and_cover_the_run(span: float) -> None:
    step, steps = timeline.ticks(span)
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 9) in (1, 2, 5)
    assert 1 <= steps <= 8 and step * steps >= span > step * (steps - 1)


def test_every_label_of_a_kata_run_is_inside_the_picture() -> None:
    """The kata's 10 orders on 4 workers ended at 6.04 s: its label was cut at the right edge,
    and the ticks fell on 1.21 s, 2.42 s."""
    from mqlab.experiments import Row
    from tests.results_data import waves_run

    run = waves_run(
        Row.make(name="10 órdenes, 4 workers", orders=10, workers=4, job_seconds=2.0), 0.04
    )
    picture = timeline.svg(run, "10 órdenes, 4 workers")
    _inside(picture)
    labels = [w for _, anchor, w in _texts(picture) if anchor == "middle" and w[:1].isdigit()]
    assert labels == ["0", "1", "2", "3", "4", "5", "6", "7"]
    assert "seconds since the first order was sent" in picture


def test_the_legend_names_every_kind_of_mark_the_picture_draws() -> None:
    picture = timeline.svg(run_with_failures(), "faults")
    _inside(picture)
    words = {w for _, _, w in _texts(picture)}
    for entry in ("✗ failed", "backoff", "† dead", f"{timeline.CRASHED} its worker died",
                  "kill -9", "waiting in the queue", "waiting for its retry"):  # fmt: skip
        assert entry in words, entry
    assert "lost" not in words  # nothing was lost here: no entry for it
    assert timeline.UNSEEN_WORDS not in words  # the crash ended at a kill: its end is known
    plain = timeline.svg(RunResult([], run_with_failures().jobs[:1], T0, 0.1, False, ["w2"]), "")
    assert {w for _, _, w in _texts(plain)} >= {"an attempt that completed (colour: its order)"}
    assert "kill -9" not in plain and "✗ failed" not in plain


def test_a_lost_job_is_drawn_as_loss_up_to_the_kill_not_as_work_to_the_end() -> None:
    """The kata's BLPOP: the message left Redis at the pop, its worker was killed mid-job, and
    nothing ran it again. It used to be a full bar to the end of the run on the dead lane."""
    jobs = [
        JobTiming("job-1", 1, "w1", 1, T0, T0 + 0.1, None, "processing"),
        JobTiming("job-2", 2, "w2", 1, T0, T0 + 0.1, T0 + 2.0, "completed"),
    ]
    history = [
        Attempt("job-1", 1, "w1", T0 + 0.1, None, "running", None, None),
        Attempt("job-2", 1, "w2", T0 + 0.1, T0 + 2.0, "completed", None, None),
    ]
    run = RunResult([], jobs, T0, 0.1, False, ["w1", "w2"], history=history,
                    kills=[(T0 + 0.5, "w1")])  # fmt: skip
    picture = timeline.svg(run, "blpop")
    assert "order 1: 0.100s to 0.500s, lost" in picture
    assert 'fill="white" stroke=' in picture and ">∅</text>" in picture
    assert {"∅", "lost", timeline.UNSEEN_WORDS} <= {w for _, _, w in _texts(picture)}
    assert (
        timeline.text(run, width=20).splitlines()[0].endswith("#1 0.10-0.50s ∅, kill -9 at 0.50s")
    )


def test_a_crash_with_no_kill_on_record_is_an_outline_up_to_when_it_was_found() -> None:
    """The crash loop: the worker died by itself (os._exit) at some time nobody recorded; the
    attempt's finished_at is when another delivery found it unfinished. A full bar up to then
    read as work done for that long."""
    jobs = [JobTiming("job-1", 1, "w2", 2, T0, T0 + 3.0, T0 + 3.5, "completed")]
    history = [
        Attempt("job-1", 1, "w1", T0 + 0.1, T0 + 3.0, "crashed", None, None),
        Attempt("job-1", 2, "w2", T0 + 3.0, T0 + 3.5, "completed", None, None),
    ]
    picture = timeline.svg(RunResult([], jobs, T0, 0.1, False, ["w1", "w2"], history=history), "")
    assert 'stroke-dasharray="3,2"><title>order 1: 0.100s to 3.000s, crashed' in picture
    assert timeline.UNSEEN_WORDS in {w for _, _, w in _texts(picture)}
