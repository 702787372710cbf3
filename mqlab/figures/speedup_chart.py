"""Speedup against workers: one line per kind of work a suite scales (sleep-bound, CPU-bound,
a drain with batches or one at a time), measured, beside the ideal (W workers, W times
faster). Drawn as an SVG for the report and as text for the terminal.

A line is the rows of one setup (the same orders and jobs: Row.setup), either over worker
processes of one slot each or over the slots of one process (--concurrency), with a 1-worker,
1-slot row to measure against and at least one more: the speedup of each is that row's
makespan over its own (RowResult.speedup).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from mqlab.experiments import Row
from mqlab.figures.results import RowResult, SuiteResult

_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 640, 360, 56, 190, 30, 44
_COLORS = ("#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2")


@dataclass(frozen=True)
class Line:
    """One kind of work: (workers, speedup) points, fewest workers first."""

    label: str
    points: tuple[tuple[int, float], ...]


def kind_of(row: Row) -> str:
    """What a line is called: the work and its job time, or a drain, and how it is taken."""
    spec = row.spec
    name = "drain" if row.prefill else f"{spec.work} {spec.job_seconds:g} s"
    if spec.batch == 1:
        name += ", 1 by 1"
    elif row.prefill:
        name += ", batches"
    return name


def lines(result: SuiteResult) -> list[Line]:
    """The suite's lines (none when no setup has a 1-worker row and another): over worker
    processes of one slot each, and over the slots of one process (--concurrency)."""
    groups: dict[tuple[object, ...], list[tuple[int, RowResult]]] = {}
    for r in result.rows:
        row = r.row
        if row.faulty or math.isnan(r.speedup) or (row.workers > 1 and row.spec.concurrency > 1):
            continue
        if row.workers > 1 or row.spec.concurrency == 1:
            groups.setdefault(("workers", *row.setup), []).append((row.workers, r))
        if row.workers == 1:
            groups.setdefault(("slots", *row.setup), []).append((row.spec.concurrency, r))
    out = []
    for (axis, *_), rows in groups.items():
        if len(rows) < 2 or not any(n == 1 for n, _ in rows):
            continue
        points = sorted({(n, r.speedup if n > 1 else 1.0) for n, r in rows})
        label = kind_of(rows[0][1].row) + (", slots" if axis == "slots" else "")
        out.append(Line(label, tuple(points)))
    return out


def svg(result: SuiteResult) -> str | None:
    """The chart, or None when the suite has no line to draw."""
    drawn = lines(result)
    if not drawn:
        return None
    most_w = max(w for line in drawn for w, _ in line.points)
    top = max([most_w, *(s for line in drawn for _, s in line.points)])
    top = _nice(top)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(w: float) -> float:
        return _LEFT + plot_w * (w - 1) / max(1, most_w - 1)

    def y(s: float) -> float:
        return _TOP + plot_h * (1 - s / top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{_W}" height="{_H}" fill="white"/>',
        f'<text x="{_LEFT}" y="18" font-size="14">Speedup against workers (1 worker = 1)</text>',
    ]
    for tick in _ticks(top):
        out.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y(tick):.1f}" '
                   f'y2="{y(tick):.1f}" stroke="#ddd"/>')  # fmt: skip
        out.append(f'<text x="{_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                   f"{tick:g}x</text>")  # fmt: skip
    workers = sorted({w for line in drawn for w, _ in line.points})
    for w in workers:
        out.append(f'<text x="{x(w):.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle">'
                   f"{w}</text>")  # fmt: skip
    out.append(f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_H - 8}" text-anchor="middle">'
               "worker processes (or slots of one process)</text>")  # fmt: skip
    out.append(f'<line x1="{x(1):.1f}" y1="{y(1):.1f}" x2="{x(most_w):.1f}" y2="{y(most_w):.1f}" '
               'stroke="#999" stroke-dasharray="5,4"/>')  # fmt: skip
    legend = [("ideal (W x)", "#999", True)]
    for i, line in enumerate(drawn):
        color = _COLORS[i % len(_COLORS)]
        path = " ".join(f"{x(w):.1f},{y(s):.1f}" for w, s in line.points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for w, s in line.points:
            tip = f"{escape(line.label)}: {w} workers, {s:.2f}x"
            out.append(f'<circle cx="{x(w):.1f}" cy="{y(s):.1f}" r="3.5" fill="{color}">'
                       f"<title>{tip}</title></circle>")  # fmt: skip
        legend.append((line.label, color, False))
    lx = _W - _RIGHT + 16
    for i, (label, color, dashed) in enumerate(legend):
        ly = _TOP + 10 + 20 * i
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        out.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{ly}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="2"{dash}/>')  # fmt: skip
        out.append(f'<text x="{lx + 28}" y="{ly + 4}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def text(result: SuiteResult) -> list[str]:
    """The same lines as a table a terminal shows: workers across, one line a row."""
    drawn = lines(result)
    if not drawn:
        return []
    workers = sorted({w for line in drawn for w, _ in line.points})
    width = max(len(line.label) for line in [*drawn, Line("workers/slots", ())])
    head = "workers/slots".ljust(width) + "".join(f"{w:>8}" for w in workers)
    out = [head, "ideal".ljust(width) + "".join(f"{w:>7}x" for w in workers)]
    for line in drawn:
        found = dict(line.points)
        cells = "".join(f"{found[w]:>7.2f}x" if w in found else f"{'-':>8}" for w in workers)
        out.append(line.label.ljust(width) + cells)
    return out


def _nice(value: float) -> float:
    """A round top for the axis, at or above `value`."""
    for step in (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 40, 50, 64, 100):
        if step >= value:
            return float(step)
    return float(math.ceil(value / 50) * 50)


def _ticks(top: float) -> list[float]:
    step = top / 4
    return [step * i for i in range(5)]
