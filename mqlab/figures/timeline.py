"""Per-worker timelines of one run: an SVG picture and a text version for the markdown.

Each attempt is a bar on the lane of the worker that ran it, with a thin pale strip below the
lane for the time it waited (in the queue from its order, or from its retry's due time). An
attempt that did not complete ends in a mark (MARKS): ✗ failed (a dotted line on to the time
its retry was due), † the dead end of a dead job, a diagonal cross (CRASHED) crashed: its
worker died (a kill by the lab is a red line on that lane), ↩ handed back or reclaimed, ∅
lost: it never finished and nothing came after it. An attempt whose end is not known (lost,
or its worker crashed by itself, with no kill on record) is an outline up to what is known
(the kill, or when another delivery found it unfinished), not a bar: no work is known after
its start. The axis runs on round values, and a legend names each kind of mark the picture
holds. A run recorded before attempts were (no history) draws its jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from mqlab.figures.results import RunResult
from mqlab.protocol.ids import worker_sort_key

_LANE, _BAR, _LEFT, _WIDTH, _TOP, _RIGHT = 26, 16, 70, 760, 24, 30
#: Above this many bars, only the waits of retries are drawn: hundreds of orders queued at
#: once would otherwise paint every lane pale from the first second (their waits overlap).
WAITS_SHOWN = 100
#: Crashed: the cross the TUI's timeline ends a cut job with.
CRASHED = "\u2573"
_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1")
#: The mark at the end of an attempt that did not complete, by outcome (and for a dead end).
MARKS = {
    "failed": "✗",
    "crashed": CRASHED,
    "handed_back": "↩",
    "reclaimed": "↩",
    "dead": "†",
    "lost": "∅",
}
_MARK_COLORS = {"✗": "#c00", CRASHED: "#c00", "↩": "#555", "†": "#000", "∅": "#c00"}
#: How an attempt ended, by its mark: the bar's tooltip, and the key of its legend entry.
_ENDED = {"": "completed", "✗": "failed", CRASHED: "crashed", "↩": "handed back", "†": "dead",
          "∅": "lost"}  # fmt: skip


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
    #: Its end is not known (lost, or its worker died with no kill on record): drawn as an
    #: outline up to what is known, a kill or when another delivery found it unfinished.
    unseen: bool = False


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
            # Never finished, and nothing after it: the job was lost with its worker (the
            # kata's BLPOP), or was still running when the run ended.
            lost = (
                a.finished_at is None
                and a.attempt == last[a.job_id]
                and job.status not in ("completed", "dead")
            )
            if a.outcome == "crashed" or lost:
                # It ended when its worker died, not when a later delivery found it unfinished
                # (what finished_at records): at the lab's kill, when the lab killed it.
                killed = [t for t, w in run.kills if w == a.worker_id and a.started_at <= t]
                finished = min([finished, *killed])
            # A worker that crashed by itself (no kill) records no end: only when it was found.
            unseen = lost or (a.outcome == "crashed" and not killed)
            if lost:
                mark = MARKS["lost"]
            elif a.outcome == "completed" or a.outcome == "running":
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
                    unseen=unseen,
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


def ticks(span: float, most: int = 8) -> tuple[float, int]:
    """The axis's step (1, 2 or 5 times a power of ten, at most `most` steps to cover `span`)
    and how many steps: ticks fall on round values, and the last one at or past `span`."""
    exponent = math.floor(math.log10(span / most))
    for unit in (1, 2, 5, 10):
        step = unit * 10.0**exponent
        if span / step <= most:
            return step, max(1, math.ceil(span / step - 1e-9))
    raise AssertionError("unreachable: 10 * 10**e >= span / most")


def tick_label(t: float, step: float) -> str:
    """`t` with as many decimals as the step needs (0.5 s steps: one)."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{t:.{decimals}f}"


#: The legend's words for an outline (an attempt whose end is not known).
UNSEEN_WORDS = "no end recorded: up to a kill, or to when it was found"
#: The legend's entries, in this order; each is drawn only where the picture has one.
_LEGEND = (
    ("completed", "an attempt that completed (colour: its order)"),
    ("wait", "waiting in the queue"),
    ("retry", "waiting for its retry"),
    ("failed", "✗ failed"),
    ("backoff", "backoff"),
    ("dead", "† dead"),
    ("crashed", f"{CRASHED} its worker died"),
    ("handed back", "↩ handed back"),
    ("killed", "kill -9"),
    ("lost", "lost"),
    ("unseen", UNSEEN_WORDS),
)


def svg(run: RunResult, title: str) -> str:
    """An SVG of which worker ran which attempt when, with the waits below each lane, a time
    axis on round values and a legend of what it draws."""
    lanes = _lanes(run)
    step, steps = ticks(_span(run, lanes))
    scale = _WIDTH / (step * steps)
    axis_y = _TOP + _LANE * len(lanes) + 4
    drawn: set[str] = set()
    body: list[str] = []
    row_of = {worker: i for i, worker in enumerate(lanes)}
    waits = sum(len(bars) for bars in lanes.values()) <= WAITS_SHOWN
    for worker, bars in lanes.items():
        y = _TOP + row_of[worker] * _LANE
        body.append(f'<text x="4" y="{y + 12}">{escape(worker[:9])}</text>')
        body.append(
            f'<line x1="{_LEFT}" y1="{y + _BAR / 2}" x2="{_LEFT + _WIDTH}" '
            f'y2="{y + _BAR / 2}" stroke="#ddd"/>'
        )
        for bar in bars:
            body += _bar_svg(bar, y, scale, waits, drawn)
    for at, worker in run.kills:
        drawn.add("killed")
        x = _LEFT + (at - run.first_sent) * scale
        y = _TOP + row_of[worker] * _LANE
        body.append(
            f'<line x1="{x:.1f}" y1="{y - 2}" x2="{x:.1f}" y2="{y + _BAR + 2}" stroke="#c00" '
            f'stroke-width="2"><title>kill -9 {escape(worker)} at {at - run.first_sent:.3f}s'
            "</title></line>"
        )
    body.append(
        f'<line x1="{_LEFT}" y1="{axis_y}" x2="{_LEFT + _WIDTH}" y2="{axis_y}" stroke="#333"/>'
    )
    for k in range(steps + 1):
        x = _LEFT + k * step * scale
        body.append(
            f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="#333"/>'
        )
        body.append(
            f'<text x="{x:.1f}" y="{axis_y + 16}" text-anchor="middle">'
            f"{tick_label(k * step, step)}</text>"
        )
    body.append(
        f'<text x="{_LEFT + _WIDTH / 2:.1f}" y="{axis_y + 30}" text-anchor="middle" '
        'fill="#333">seconds since the first order was sent</text>'
    )
    legend, legend_height = _legend(drawn, axis_y + 44)
    height = axis_y + 44 + legend_height
    return (
        "\n".join(
            [
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + _RIGHT}" '
                f'height="{height}" font-family="monospace" font-size="11">',
                '<rect width="100%" height="100%" fill="white"/>',
                f'<text x="{_LEFT}" y="15" font-size="12">{escape(title)}</text>',
                *body,
                *legend,
                "</svg>",
            ]
        )
        + "\n"
    )


def _legend(drawn: set[str], top: float) -> tuple[list[str], int]:
    """The legend's swatches for what `drawn` names, left to right, wrapped to the width."""
    out: list[str] = []
    x, y = float(_LEFT), top
    for key, words in _LEGEND:
        if key not in drawn:
            continue
        width = 26 + 7 * len(words)
        if x + width > _LEFT + _WIDTH and x > _LEFT:
            x, y = float(_LEFT), y + 18
        out += _swatch(key, x, y)
        out.append(f'<text x="{x + 22:.1f}" y="{y + 9}">{escape(words)}</text>')
        x += width + 12
    return out, (int(y - top) + 18 if out else 0)


def _swatch(key: str, x: float, y: float) -> list[str]:
    """A 16x10 sample of what `key` looks like in the lanes."""
    if key == "completed":
        return [f'<rect x="{x}" y="{y}" width="16" height="10" fill="{_COLORS[0]}"/>']
    if key in ("wait", "retry"):
        dash = ' stroke="#c00" stroke-width="0.8"' if key == "retry" else ""
        return [
            f'<rect x="{x}" y="{y + 6}" width="16" height="3" fill="{_COLORS[0]}" '
            f'opacity="0.4"{dash}/>'
        ]
    if key == "backoff":
        return [
            f'<line x1="{x}" y1="{y + 5}" x2="{x + 16}" y2="{y + 5}" stroke="#c00" '
            'stroke-dasharray="2,3"/>'
        ]
    if key == "killed":
        return [f'<line x1="{x + 8}" y1="{y - 2}" x2="{x + 8}" y2="{y + 12}" stroke="#c00" '
                'stroke-width="2"/>']  # fmt: skip
    if key == "unseen":
        return [_outline(x, y - 3, 16, _COLORS[0])]
    if key == "lost":
        return [f'<text x="{x + 4}" y="{y + 9}" fill="#c00" font-weight="bold">∅</text>']
    return [f'<rect x="{x}" y="{y}" width="16" height="10" fill="{_COLORS[0]}" opacity="0.6"/>']


def _outline(x: float, y: float, width: float, color: str, title: str = "") -> str:
    """An attempt whose end is not known: an outline, not a bar (no work is known after its
    start: its worker vanished, lost the job or died)."""
    return (
        f'<rect x="{x:.1f}" y="{y + 3}" width="{max(1.0, width):.1f}" height="{_BAR - 6}" '
        f'fill="white" stroke="{color}" stroke-dasharray="3,2">{title}</rect>'
    )


def _bar_svg(bar: _Bar, y: float, scale: float, waits: bool, drawn: set[str]) -> list[str]:
    color = _COLORS[bar.order % len(_COLORS)]
    x0, x1 = _LEFT + bar.started * scale, _LEFT + bar.finished * scale
    out = []
    if waits or bar.retry:
        # Below the lane, not across it: the waits of later jobs overlap earlier jobs' bars.
        drawn.add("retry" if bar.retry else "wait")
        dash = ' stroke="#c00" stroke-width="0.8"' if bar.retry else ""
        what = "for its retry" if bar.retry else "in the queue"
        out.append(
            f'<rect x="{_LEFT + bar.waited_from * scale:.1f}" y="{y + _BAR + 1}" '
            f'width="{max(0.5, (bar.started - bar.waited_from) * scale):.1f}" height="3" '
            f'fill="{color}" opacity="0.4"{dash}><title>order {bar.order}: waiting {what} '
            f"from {bar.waited_from:.3f}s</title></rect>"
        )
    title = (
        f"<title>order {bar.order}: {bar.started:.3f}s to {bar.finished:.3f}s, "
        f"{_ENDED[bar.mark]}</title>"
    )
    drawn.add(_ENDED[bar.mark])
    if bar.unseen:
        drawn.add("unseen")
        out.append(_outline(x0, y, x1 - x0, color, title))
    else:
        opacity = "" if not bar.mark else ' opacity="0.6"'
        out.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{max(1.0, x1 - x0):.1f}" height="{_BAR}" '
            f'fill="{color}"{opacity}>{title}</rect>'
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
        drawn.add("backoff")
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
