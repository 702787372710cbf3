"""Per-worker timelines of one run: an SVG picture and a text version for the markdown."""

from __future__ import annotations

from html import escape

from mqlab.protocol.ids import worker_sort_key
from mqlab.results import RunResult

_LANE, _BAR, _LEFT, _WIDTH, _TOP = 26, 16, 70, 760, 24
_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1")


def _lanes(run: RunResult) -> dict[str, list[tuple[float, float, float, int]]]:
    """worker -> [(enqueued, started, finished, order id)] relative to the first request."""
    t0 = run.first_sent
    lanes: dict[str, list[tuple[float, float, float, int]]] = {w: [] for w in run.worker_ids}
    for job in run.jobs:
        if job.worker_id and job.started_at is not None and job.finished_at is not None:
            lanes.setdefault(job.worker_id, []).append(
                (job.enqueued_at - t0, job.started_at - t0, job.finished_at - t0, job.order_id)
            )
    return {w: sorted(v, key=lambda x: x[1]) for w, v in sorted(lanes.items(), key=_lane_key)}


def _lane_key(item: tuple[str, object]) -> tuple[object, ...]:
    return worker_sort_key(item[0])


def svg(run: RunResult, title: str) -> str:
    """An SVG of which worker ran which job when (pale: waiting in the queue)."""
    lanes = _lanes(run)
    span = max(run.makespan, 1e-3)
    scale = _WIDTH / span
    height = _TOP + _LANE * len(lanes) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 20}" '
        f'height="{height}" font-family="monospace" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{_LEFT}" y="15" font-size="12">{escape(title)}</text>',
    ]
    for i, (worker, jobs) in enumerate(lanes.items()):
        y = _TOP + i * _LANE
        out.append(f'<text x="4" y="{y + 12}">{escape(worker)}</text>')
        out.append(
            f'<line x1="{_LEFT}" y1="{y + _BAR / 2}" x2="{_LEFT + _WIDTH}" '
            f'y2="{y + _BAR / 2}" stroke="#ddd"/>'
        )
        for enqueued, started, finished, order in jobs:
            color = _COLORS[order % len(_COLORS)]
            x0, x1 = _LEFT + started * scale, _LEFT + finished * scale
            out.append(
                f'<rect x="{_LEFT + enqueued * scale:.1f}" y="{y + 6}" '
                f'width="{max(0.5, (started - enqueued) * scale):.1f}" height="4" '
                f'fill="{color}" opacity="0.3"/>'
            )
            out.append(
                f'<rect x="{x0:.1f}" y="{y}" width="{max(1.0, x1 - x0):.1f}" height="{_BAR}" '
                f'fill="{color}"><title>order {order}: {started:.3f}s to {finished:.3f}s'
                f"</title></rect>"
            )
            if x1 - x0 > 24:
                out.append(f'<text x="{x0 + 3:.1f}" y="{y + 12}" fill="white">#{order}</text>')
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


def text(run: RunResult, width: int = 60) -> str:
    """One line per worker: a bar of busy (█) and idle (·) time, then its jobs."""
    lanes = _lanes(run)
    span = max(run.makespan, 1e-3)
    lines = []
    for worker, jobs in lanes.items():
        cells = ["·"] * width
        for _, started, finished, _ in jobs:
            first = min(width - 1, int(started / span * width))
            last = min(width, max(first + 1, round(finished / span * width)))
            for c in range(first, last):
                cells[c] = "█"
        spans = ", ".join(f"#{o} {s:.2f}-{f:.2f}s" for _, s, f, o in jobs)
        lines.append(f"{worker:>4} |{''.join(cells)}| {spans or 'no job'}")
    lines.append(f"{'':>4}  0s{'':>{width - 8}}{span:.2f}s")
    return "\n".join(lines)
