"""The live timeline: per worker, the jobs of the last N seconds as bars on a shared time axis,
so that four workers taking ten jobs show as three waves."""

from __future__ import annotations

import math

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from mqlab.protocol.events import WorkerState
from mqlab.protocol.ids import worker_sort_key
from mqlab.tui.model import Frame, JobBar

#: Consecutive jobs of a worker alternate colors, or one long bar would hide where they meet.
BAR_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1")
LABEL_WIDTH = 5


def lanes(frame: Frame) -> dict[str, list[JobBar]]:
    """worker -> its bars, for live workers and for any worker with a bar in the window."""
    out: dict[str, list[JobBar]] = {w.id: [] for w in frame.workers if w.state != WorkerState.DEAD}
    for bar in frame.bars:
        out.setdefault(bar.worker, []).append(bar)
    return dict(sorted(out.items(), key=lambda item: worker_sort_key(item[0])))


def render_lane(bars: list[JobBar], start: float, span: float, width: int, now: float) -> Text:
    """One worker's row: · for idle time, a colored block per job (▓ while it runs)."""
    cells: list[tuple[str, str]] = [("·", "dim")] * width
    per_cell = span / width
    for bar in sorted(bars, key=lambda b: b.start):
        end = now if bar.end is None else bar.end
        first = max(0, int((bar.start - start) / per_cell))
        last = min(width, max(first + 1, math.ceil((end - start) / per_cell)))
        color = BAR_COLORS[bar.order % len(BAR_COLORS)]
        glyph = "▓" if bar.end is None else "█"
        label = f"#{bar.order}"
        for c in range(first, last):
            offset = c - first
            # The order number sits inside the bar where it fits, white on the bar's color.
            if last - first > len(label) + 1 and 0 < offset <= len(label):
                cells[c] = (label[offset - 1], f"bold white on {color}")
            else:
                cells[c] = (glyph, color)
    # One span per run of equal style, not per cell: rendering cost follows the span count.
    text = Text()
    run_chars: list[str] = []
    run_style = cells[0][1] if cells else ""
    for char, style in cells:
        if style != run_style:
            text.append("".join(run_chars), run_style)
            run_chars, run_style = [], style
        run_chars.append(char)
    if run_chars:
        text.append("".join(run_chars), run_style)
    return text


def axis(span: float, width: int) -> Text:
    """-30s ... -15s ... now, under the lanes."""
    line = [" "] * width
    marks = 4
    for k in range(marks + 1):
        seconds = span * (1 - k / marks)
        label = "now" if k == marks else f"-{seconds:.3g}s"
        pos = min(width - len(label), max(0, round(k / marks * width) - len(label) // 2))
        line[pos : pos + len(label)] = label
    return Text("".join(line), style="dim")


class Timeline(Widget):
    """Lanes of job bars; its height follows the number of workers."""

    frame: reactive[Frame | None] = reactive(None, layout=False, always_update=True)

    def show(self, frame: Frame) -> None:
        """Take a new frame; skip the redraw while nothing moves (no bar in the window)."""
        old = self.frame
        if old is not None and not old.bars and not frame.bars and lanes(old) == lanes(frame):
            return
        relayout = old is None or len(lanes(old)) != len(lanes(frame))
        self.frame = frame
        if relayout:
            self.refresh(layout=True)

    def render(self) -> Text:
        frame = self.frame
        width = max(10, self.size.width - LABEL_WIDTH)
        if frame is None:
            return Text("waiting for the first sample ...", style="dim")
        rows = lanes(frame)
        out = Text()
        start = frame.at - frame.timeline_seconds
        for worker, bars in rows.items():
            out.append(f"{worker:>4} ", style="bold")
            out.append_text(render_lane(bars, start, frame.timeline_seconds, width, frame.at))
            out.append("\n")
        if not rows:
            out.append("no worker yet\n", style="dim")
        out.append(" " * LABEL_WIDTH)
        out.append_text(axis(frame.timeline_seconds, width))
        return out

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        frame = self.frame
        return 1 + max(1, len(lanes(frame)) if frame is not None else 1)
