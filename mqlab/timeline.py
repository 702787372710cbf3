"""Per-worker timelines of one run: an SVG picture and a text version for the markdown.

Each attempt is a bar on the lane of the worker that ran it (pale before it: waiting in the
queue, from the order or from its retry's due time). An attempt that did not complete ends in
a mark (MARKS): ✗ failed (a dotted line on to the time its retry was due), † the dead end of
a dead job, a diagonal cross (CRASHED) crashed: its worker died (a kill by the lab is a red
line on that lane), ↩ handed back or reclaimed. A run recorded before attempts were (no
history) draws its jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from mqlab.protocol.ids import worker_sort_key
from mqlab.results import RunResult

_LANE, _BAR, _LEFT, _WIDTH, _TOP = 26, 16, 70, 760, 24
#: Above this many bars, only the waits of retries are drawn: hundreds of orders queued at
#: once would otherwise paint every lane pale from the first second (their waits overlap).
WAITS_SHOWN = 100
#: Crashed: the cross the TUI's timeline ends a cut job with.
CRASHED = "\u2573"
_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1")
#: The mark at the end of an attempt that did not complete, by outcome (and for a dead end).
MARKS = {"failed": "✗", "crashed": CRASHED, "handed_back": "↩", "reclaimed": "↩", "dead": "†"}
_MARK_COLORS = {"✗": "#c00", CRASHED: "#c00", "↩": "#555", "†": "#000"}


@dataclass(frozen=True)
class _Bar:
    """One attempt on a lane, in seconds from the run's first request."""

    waited_from: float  # enqueued, or due again after a failure
    started: float
    finished: float
    order: int
    mark: str  # "" when it completed; else one of MARKS' values
    due: float | None  # a failed attempt's retry due time
    retry: bool = False  # it waited from its retry's due time, not from the order


def _lanes(run: RunResult) -> dict[str, list[_Bar]]:
    """worker -> its attempts, oldest first; the lanes in natural order (w1 w2 w10)."""
    t0 = run.first_sent
    lanes: dict[str, list[_Bar]] = {w: [] for w in run.worker_ids}
    if not run.history:
        for job in run.jobs:
            if job.worker_id and job.started_at is not None and job.finished_at is not None:
                lanes.setdefault(job.worker_id, []).append(
                    _Bar(
                        job.enqueued_at - t0,
                        job.started_at - t0,
                        job.finished_at - t0,
                        job.order_id,
                        "",
                        None,
                    )
                )
    else:
        jobs = {j.job_id: j for j in run.jobs}
        last = {a.job_id: a.attempt for a in run.history}
        due_again: dict[str, float] = {}
        end = t0 if math.isnan(run.last_finished) else run.last_finished
        for a in sorted(run.history, key=lambda a: (a.started_at or 0.0, a.job_id)):
            job = jobs.get(a.job_id)
            if job is None or a.worker_id is None or a.started_at is None:
                continue
            finished = a.finished_at if a.finished_at is not None else max(end, a.started_at)
            if a.outcome == "crashed":
                # It ended when its worker died, not when a later delivery found it unfinished
                # (what finished_at records): at the lab's kill, when the lab killed it.
                killed = [t for t, w in run.kills if w == a.worker_id and a.started_at <= t]
                finished = min([finished, *killed])
            if a.outcome == "completed" or a.outcome == "running":
                mark = ""
            elif job.status == "dead" and a.attempt == last[a.job_id]:
                mark = MARKS["dead"]
            else:
                mark = MARKS.get(a.outcome, "✗")
            waited = due_again.get(a.job_id, job.enqueued_at)
            lanes.setdefault(a.worker_id, []).append(
                _Bar(
                    waited - t0,
                    a.started_at - t0,
                    finished - t0,
                    job.order_id,
                    mark,
                    None if a.next_attempt_at is None else a.next_attempt_at - t0,
                    retry=a.job_id in due_again,
                )
            )
            if a.next_attempt_at is not None:
                due_again[a.job_id] = a.next_attempt_at
    for _, worker in run.kills:
        lanes.setdefault(worker, [])
    return {
        w: sorted(v, key=lambda b: b.started)
        for w, v in sorted(lanes.items(), key=lambda kv: worker_sort_key(kv[0]))
    }


def _span(run: RunResult, lanes: dict[str, list[_Bar]]) -> float:
    ends = [b.finished for bars in lanes.values() for b in bars]
    ends += [b.due for bars in lanes.values() for b in bars if b.due is not None]
    ends += [at - run.first_sent for at, _ in run.kills]
    makespan = 0.0 if math.isnan(run.makespan) else run.makespan  # NaN: nothing finished
    return max([makespan, *ends, 1e-3])


def svg(run: RunResult, title: str) -> str:
    """An SVG of which worker ran which attempt when (pale: waiting in the queue)."""
    lanes = _lanes(run)
    span = _span(run, lanes)
    scale = _WIDTH / span
    height = _TOP + _LANE * len(lanes) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 20}" '
        f'height="{height}" font-family="monospace" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{_LEFT}" y="15" font-size="12">{escape(title)}</text>',
    ]
    row_of = {worker: i for i, worker in enumerate(lanes)}
    waits = sum(len(bars) for bars in lanes.values()) <= WAITS_SHOWN
    for worker, bars in lanes.items():
        y = _TOP + row_of[worker] * _LANE
        out.append(f'<text x="4" y="{y + 12}">{escape(worker[:9])}</text>')
        out.append(
            f'<line x1="{_LEFT}" y1="{y + _BAR / 2}" x2="{_LEFT + _WIDTH}" '
            f'y2="{y + _BAR / 2}" stroke="#ddd"/>'
        )
        for bar in bars:
            out += _bar_svg(bar, y, scale, waits)
    for at, worker in run.kills:
        x = _LEFT + (at - run.first_sent) * scale
        y = _TOP + row_of[worker] * _LANE
        out.append(
            f'<line x1="{x:.1f}" y1="{y - 2}" x2="{x:.1f}" y2="{y + _BAR + 2}" stroke="#c00" '
            f'stroke-width="2"><title>kill -9 {escape(worker)} at {at - run.first_sent:.3f}s'
            "</title></line>"
        )
    axis_y = _TOP + _LANE * len(lanes) + 4
    out.append(
        f'<line x1="{_LEFT}" y1="{axis_y}" x2="{_LEFT + _WIDTH}" y2="{axis_y}" stroke="#333"/>'
    )
    for k in range(6):
        t = span * k / 5
        x = _LEFT + t * scale
        out.append(
            f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="#333"/>'
        )
        out.append(f'<text x="{x - 10:.1f}" y="{axis_y + 16}">{t:.2f}s</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _bar_svg(bar: _Bar, y: float, scale: float, waits: bool) -> list[str]:
    color = _COLORS[bar.order % len(_COLORS)]
    x0, x1 = _LEFT + bar.started * scale, _LEFT + bar.finished * scale
    out = []
    if waits or bar.retry:
        out.append(
            f'<rect x="{_LEFT + bar.waited_from * scale:.1f}" y="{y + 6}" '
            f'width="{max(0.5, (bar.started - bar.waited_from) * scale):.1f}" height="4" '
            f'fill="{color}" opacity="0.3"/>'
        )
    ended = {"": "completed", "✗": "failed", CRASHED: "crashed", "↩": "handed back", "†": "dead"}
    opacity = "" if not bar.mark else ' opacity="0.6"'
    out.append(
        f'<rect x="{x0:.1f}" y="{y}" width="{max(1.0, x1 - x0):.1f}" height="{_BAR}" '
        f'fill="{color}"{opacity}><title>order {bar.order}: {bar.started:.3f}s to '
        f"{bar.finished:.3f}s, {ended[bar.mark]}</title></rect>"
    )
    if x1 - x0 > 24:
        out.append(f'<text x="{x0 + 3:.1f}" y="{y + 12}" fill="white">#{bar.order}</text>')
    if bar.mark:
        out.append(
            f'<text x="{x1 + 1:.1f}" y="{y + 12}" fill="{_MARK_COLORS[bar.mark]}" '
            f'font-weight="bold">{bar.mark}</text>'
        )
    if bar.due is not None and bar.due > bar.finished:
        # The backoff: from the failure to the time the retry was due.
        out.append(
            f'<line x1="{x1:.1f}" y1="{y + _BAR / 2}" x2="{_LEFT + bar.due * scale:.1f}" '
            f'y2="{y + _BAR / 2}" stroke="#c00" stroke-dasharray="2,3"><title>backoff: due '
            f"{bar.due - bar.finished:.3f}s after the failure</title></line>"
        )
    return out


def text(run: RunResult, width: int = 60) -> str:
    """One line per worker: a bar of busy (█; ▒ an attempt that did not complete) and idle
    (·) time, then its attempts, each with its mark."""
    lanes = _lanes(run)
    span = _span(run, lanes)
    lines = []
    for worker, bars in lanes.items():
        cells = ["·"] * width
        for bar in bars:
            first = min(width - 1, int(bar.started / span * width))
            last = min(width, max(first + 1, round(bar.finished / span * width)))
            for c in range(first, last):
                cells[c] = "▒" if bar.mark else "█"
        spans = ", ".join(
            f"#{b.order} {b.started:.2f}-{b.finished:.2f}s{' ' + b.mark if b.mark else ''}"
            for b in bars
        )
        killed = [at - run.first_sent for at, w in run.kills if w == worker]
        if killed:
            spans += "".join(f", kill -9 at {t:.2f}s" for t in killed)
        lines.append(f"{worker:>4} |{''.join(cells)}| {spans or 'no job'}")
    lines.append(f"{'':>4}  0s{'':>{width - 8}}{span:.2f}s")
    return "\n".join(lines)
